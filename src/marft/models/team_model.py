"""One base model for the whole team: a named LoRA adapter per agent and a value head.

The reference MARFT code loads a full copy of the base for every agent and one more for the
critic. Here the base is loaded once and frozen; each agent is a PEFT LoRA adapter named after its
role (or, with ``lora.shared``, every agent is the one adapter ``shared``), the reference policy
is the base with adapters disabled, and the critic is a small value head on the base's final
hidden state (adapters disabled), so its features are computed once per observation and never
need a backward through the base.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from torch import Tensor, nn

from marft.config import LoraSettings
from marft.models.loading import eos_token_ids
from marft.models.logprobs import chunked_token_logprobs
from marft.models.value_head import ValueHead

SHARED_ADAPTER = "shared"
"""The adapter's name when all agents share one (``lora.shared``)."""


@dataclass
class SequenceBatch:
    """Prompt + response token ids of ``S`` actions.

    Attributes:
        prompt_ids: ``[S, P]`` left-padded prompt tokens.
        prompt_mask: ``[S, P]`` 1 on real prompt tokens.
        response_ids: ``[S, L]`` right-padded action tokens.
        response_mask: ``[S, L]`` 1 on real action tokens.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor

    def trimmed(self) -> SequenceBatch:
        """Drop padding columns that every row has (leading for prompts, trailing for responses)."""
        p_keep = self.prompt_mask.any(0).nonzero()
        r_keep = self.response_mask.any(0).nonzero()
        p0 = int(p_keep[0]) if len(p_keep) else self.prompt_mask.shape[1]
        r1 = int(r_keep[-1]) + 1 if len(r_keep) else 1
        return SequenceBatch(
            self.prompt_ids[:, p0:],
            self.prompt_mask[:, p0:],
            self.response_ids[:, :r1],
            self.response_mask[:, :r1],
        )


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Positions that ignore left padding: ``cumsum(mask) - 1``, clamped at 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class TeamModel(nn.Module):
    """A frozen base, one LoRA adapter per role (or one for all, ``lora.shared``), and a value head.

    Everything that takes an agent (:meth:`adapter`, :meth:`adapter_parameters`, ...) also takes
    an adapter name: an agent's role maps to its adapter (:meth:`adapter_name`), an adapter name
    to itself. Weights are per adapter (:attr:`adapters`), forwards per agent.

    Args:
        base: a Hugging Face causal LM (frozen here).
        tokenizer: its tokenizer (left padding).
        roles: the agents, in acting order.
        lora: adapter settings of all agents (``lora.shared``: one adapter for all).
        value_head_width: hidden width of the value head (0: linear).
        dtype: dtype of the frozen base; adapters and the value head stay float32.
        device: where everything lives.
        with_critic: build the value head.
        logit_chunk_tokens: response tokens whose full-vocabulary logits exist at once when
            log-probs are taken (0: all of a forward's at once); see
            :func:`~marft.models.logprobs.chunked_token_logprobs`.
        gradient_checkpointing: recompute each decoder layer's activations in the backward
            instead of keeping them (about a third more forward work, far less memory).
    """

    def __init__(
        self,
        base: nn.Module,
        tokenizer,
        roles: Sequence[str],
        lora: LoraSettings,
        value_head_width: int = 128,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        with_critic: bool = True,
        logit_chunk_tokens: int = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.logit_chunk_tokens = logit_chunk_tokens
        self.roles = list(roles)
        self.adapter_of = {r: SHARED_ADAPTER if lora.shared else r for r in self.roles}
        self.adapters = list(dict.fromkeys(self.adapter_of.values()))  # distinct, in acting order
        base = base.to(device=device, dtype=dtype)
        base.requires_grad_(False)
        if gradient_checkpointing:
            # Non-reentrant: the frozen embeddings' output needs no requires_grad hack, and only
            # the policy's training forwards (train mode, grad on) are checkpointed.
            enable = getattr(base, "activation_checkpointing_enable", None)  # transformers >= 5.20
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if getattr(base.config, "use_cache", None) is False:
            base.config.use_cache = True
        peft_cfg = self._lora_config(lora)
        self.policy: PeftModel = get_peft_model(base, peft_cfg, adapter_name=self.adapters[0])
        for name in self.adapters[1:]:
            self.policy.add_adapter(name, self._lora_config(lora))
        # PEFT keeps LoRA matrices in float32 when the base is half precision; do the same for the
        # full per-agent copies (modules_to_save), so every trainable tensor and its optimizer
        # state is float32.
        self._float32_saved_modules()
        hidden = base.config.get_text_config().hidden_size
        self.value_head = ValueHead(hidden, value_head_width).to(device) if with_critic else None
        self.eos_ids = eos_token_ids(base, tokenizer)
        self.device = torch.device(device)
        self.policy.eval()

    def _float32_saved_modules(self) -> None:
        def cast_in(module, args):
            return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

        def cast_out(module, args, output):
            return output.to(module._marft_out_dtype)

        for wrapper in self.policy.modules():
            if not isinstance(wrapper, ModulesToSaveWrapper):
                continue
            for copy in wrapper.modules_to_save.values():
                params = list(copy.parameters())
                if not params or params[0].dtype == torch.float32:
                    continue
                copy._marft_out_dtype = params[0].dtype  # the base's dtype, for the layers after it
                copy.float()
                copy.register_forward_pre_hook(cast_in)
                copy.register_forward_hook(cast_out)

    @staticmethod
    def _lora_config(lora: LoraSettings) -> LoraConfig:
        return LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            modules_to_save=list(lora.modules_to_save) or None,
            bias="none",
            task_type="CAUSAL_LM",
        )

    # ------------------------------------------------------------------------------ parameters

    def adapter_name(self, name: str) -> str:
        """The adapter agent ``name`` runs with (an adapter name, or ``__base__``, as it is)."""
        return self.adapter_of.get(name, name)

    def named_adapter_parameters(self, role: str) -> list[tuple[str, nn.Parameter]]:
        """The trainable tensors of one agent's adapter (its LoRA matrices and ``modules_to_save``
        copies), by parameter name.

        Matched exactly on PEFT's ``.<lora_*|modules_to_save>.<adapter>.`` segment, so an adapter
        named like a module (``model``, ``mlp``) cannot pick up another agent's tensors.
        """
        name = self.adapter_name(role)
        pattern = re.compile(rf"\.(lora_[A-Za-z_]+|modules_to_save)\.{re.escape(name)}(\.|$)")
        return [(n, p) for n, p in self.policy.named_parameters() if pattern.search(n)]

    def adapter_parameters(self, role: str) -> list[nn.Parameter]:
        """The trainable tensors of one agent (see :meth:`named_adapter_parameters`)."""
        return [p for _, p in self.named_adapter_parameters(role)]

    def adapter_weights(self, names: Sequence[str] | None = None) -> dict[str, dict[str, Tensor]]:
        """Adapters as PEFT saves them (``adapter_model.safetensors`` keys), by adapter name: what
        a generation engine that keeps its own copy of the adapters loads after an update.

        Args:
            names: adapters or agents (default: every adapter); agents sharing one give it once.
        """
        from peft.utils import get_peft_model_state_dict

        wanted = self.adapters if names is None else dict.fromkeys(self.adapter_name(n) for n in names)
        return {
            name: {
                k: v.detach() for k, v in get_peft_model_state_dict(self.policy, adapter_name=name).items()
            }
            for name in wanted
        }

    def set_adapter_weights(self, weights: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Load adapters given as :meth:`adapter_weights` returns them (adapter -> PEFT tensors).

        Raises:
            ValueError: a name is not an adapter of this team, or its tensors do not fit.
        """
        from peft.utils import set_peft_model_state_dict

        for name, tensors in weights.items():
            if name not in self.adapters:
                raise ValueError(
                    f"no adapter {name!r} in this team (adapters: {', '.join(self.adapters)}; "
                    "is lora.shared the same as the run's?)"
                )
            result = set_peft_model_state_dict(self.policy, dict(tensors), adapter_name=name)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"adapter {name!r} does not fit this model: {result.unexpected_keys[:3]}")

    def adapter_config(self, role: str) -> dict:
        """The PEFT ``adapter_config.json`` content of agent (or adapter) ``role``."""
        cfg = self.policy.peft_config[self.adapter_name(role)].to_dict()
        return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}

    def base_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every parameter of the frozen base (no adapter, no saved-module copy)."""
        for n, p in self.policy.named_parameters():
            if "lora_" not in n and "modules_to_save" not in n:
                yield n, p

    @contextmanager
    def adapter(self, role: str | None) -> Iterator[None]:
        """Run the policy as agent (or adapter) ``role``; ``None`` means the reference policy (the
        bare base)."""
        if role is None:
            with self.policy.disable_adapter():
                yield
            return
        self.policy.set_adapter(self.adapter_name(role))
        yield

    # ------------------------------------------------------------------------------ forwards

    def forward_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        keep: int,
        adapter_names: list[str] | None = None,
        **kw,
    ):
        """One forward of the active adapter(s); logits only for the last ``keep`` positions."""
        extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
        return self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=kw.pop("position_ids", position_ids_from_mask(attention_mask)),
            logits_to_keep=keep,
            **extra,
            **kw,
        )

    @torch.no_grad()
    def critic_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Final hidden state of the base (adapters disabled) at the last position.

        Args:
            input_ids: ``[S, P]`` left-padded observations.
            attention_mask: ``[S, P]``.

        Returns:
            ``[S, H]`` float32 features; the frozen base makes them constant across epochs.
        """
        decoder = self.policy.get_base_model().get_decoder()
        with self.adapter(None):
            out = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,  # one forward: a KV cache would only keep every layer's keys alive
            )
        return out.last_hidden_state[:, -1].float()

    @property
    def hidden_size(self) -> int:
        """Width of the base's final hidden state (the critic's features)."""
        return self.policy.get_base_model().config.get_text_config().hidden_size

    @torch.no_grad()
    def score_reference(
        self,
        batch: SequenceBatch,
        features: Literal["none", "action", "token"] = "action",
        ref_logprobs: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> tuple[Tensor | None, Tensor | None]:
        """One forward of the bare base (adapters disabled) that serves the critic and the KL anchor.

        Args:
            batch: prompts and sampled responses of ``S`` actions.
            features: ``"action"``: the state before the first action token, ``[S, H]`` (APPO);
                ``"token"``: the state before every action token, ``[S, L, H]`` (TPPO); ``"none"``.
            ref_logprobs: also return the reference policy's log-probs of the response tokens.

        Returns:
            ``(features, ref_logprobs)``; ``ref_logprobs`` is ``[S, L]``, 0 on padding.
        """
        if features == "action" and not ref_logprobs:
            return self.critic_features(batch.prompt_ids, batch.prompt_mask), None
        if features == "none" and not ref_logprobs:
            return None, None
        with self.adapter(None):
            hidden = self._response_states(batch)
            ref = None
            if ref_logprobs:
                ref, _ = self._token_logprobs(hidden, batch, temperature, top_k, top_p)
        feats = None
        if features == "action":
            feats = hidden[:, 0].float()
        elif features == "token":
            feats = hidden.float()
        return feats, ref

    def _response_states(self, batch: SequenceBatch) -> Tensor:
        """``[S, L, H]``: the final hidden state before each response token, under the active
        adapter (LoRA layers live inside the base's modules, so the decoder applies them). No KV
        cache: it would keep every layer's keys and values alive to the end of the forward."""
        P, L = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
        ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
        mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
        out = self.policy.get_base_model().get_decoder()(
            input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
        )
        return out.last_hidden_state[:, P - 1 : P + L - 1]

    def _token_logprobs(
        self,
        hidden: Tensor,
        batch: SequenceBatch,
        temperature: float,
        top_k: int,
        top_p: float,
        entropy: bool = False,
        entropy_grad: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """:func:`chunked_token_logprobs` of ``batch``'s responses from ``[S, L, H]`` states."""
        return chunked_token_logprobs(
            hidden,
            batch.response_ids,
            batch.response_mask,
            self.output_logits,
            self.logit_chunk_tokens,
            entropy=entropy,
            entropy_grad=entropy_grad,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )

    def output_logits(self, hidden: Tensor) -> Tensor:
        """The output layer on final hidden states (``[..., H] -> [..., V]``), with the final
        logit soft-capping of the models that have one (Gemma 2 and 3)."""
        base = self.policy.get_base_model()
        logits = base.get_output_embeddings()(hidden)
        cap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def action_logprobs(
        self,
        batch: SequenceBatch,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        entropy_grad: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Token log-probs and entropies of the responses under the active adapter (with grad).

        One forward of the decoder; its final hidden states at response positions go through the
        output layer ``logit_chunk_tokens`` real tokens at a time (padding never does), so no
        full-vocabulary tensor of the whole batch exists, in the forward or the backward.

        Args:
            batch: prompts and responses of ``S`` actions.
            entropy_grad: keep the entropy in the graph (only for an entropy bonus).

        Returns:
            ``(logprobs, entropy)``, both ``[S, L]``, zero where ``response_mask`` is 0.
        """
        hidden = self._response_states(batch)
        return self._token_logprobs(hidden, batch, temperature, top_k, top_p, True, entropy_grad)
