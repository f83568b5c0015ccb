"""One base model for the whole team: a named LoRA adapter per agent and a value head.

The reference MARFT code loads a full copy of the base for every agent and one more for the
critic. Here the base is loaded once and frozen; each agent is a PEFT LoRA adapter named after its
role (or, with ``lora.shared``, every agent is the one adapter ``shared``; see
:mod:`marft.models.adapters`), the reference policy is the base with adapters disabled, and the
critic is a small value head on the base's final hidden state (adapters disabled), so its
features are computed once per observation and never need a backward through the base.

This module holds the forwards that score sequences (:class:`~marft.models.sequences.SequenceBatch`):
log-probs under an agent's adapter or the bare base, and the critic's features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from marft.config import LoraSettings
from marft.models.adapters import TeamAdapters
from marft.models.loading import eos_token_ids
from marft.models.logprobs import SamplingParams, chunked_token_logprobs
from marft.models.row_adapters import BASE, RowAdapters, adapter_specific, as_adapter, gathered_lora
from marft.models.sequences import SequenceBatch, position_ids_from_mask, response_states
from marft.models.value_head import ValueHead


def _frozen_base(
    base: nn.Module, dtype: torch.dtype, device: torch.device | str, gradient_checkpointing: bool
) -> nn.Module:
    """``base`` on ``device`` in ``dtype``, frozen, with its KV cache on and, if asked, each decoder
    layer's activations recomputed in the backward."""
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
    return base


class TeamModel(TeamAdapters):
    """A frozen base, one LoRA adapter per role (or one for all, ``lora.shared``), and a value head.

    The adapters and everything that takes an agent (:meth:`adapter`, :meth:`adapter_parameters`,
    ...) come from :class:`~marft.models.adapters.TeamAdapters`; weights are per adapter
    (:attr:`adapters`), forwards per agent.

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
        super().__init__(_frozen_base(base, dtype, device, gradient_checkpointing), roles, lora)
        self.tokenizer = tokenizer
        self.logit_chunk_tokens = logit_chunk_tokens
        hidden = base.config.get_text_config().hidden_size
        self.value_head = ValueHead(hidden, value_head_width).to(device) if with_critic else None
        self.eos_ids = eos_token_ids(base, tokenizer)
        self.device = torch.device(device)
        self.policy.eval()

    @property
    def critic_model(self) -> TeamModel:
        """The model whose bare forward gives the critic's features: this one (a team of several
        bases names one of them, :class:`~marft.models.bases.TeamBases`)."""
        return self

    @property
    def hidden_size(self) -> int:
        """Width of the base's final hidden state (the critic's features)."""
        return self.policy.get_base_model().config.get_text_config().hidden_size

    # ------------------------------------------------------------------------------ forwards

    def forward_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        keep: int,
        adapter_names: list[str] | None = None,
        **kw,
    ):
        """One forward of the active adapter(s); logits only for the last ``keep`` positions.

        Args:
            input_ids: ``[S, N]`` left-padded tokens.
            attention_mask: ``[S, N]`` (with a KV cache: of the cached and the new tokens).
            keep: positions whose logits are computed (``logits`` is ``[S, keep, V]``).
            adapter_names: ``S`` adapter names, one per row (a mixed-adapter batch; None: the
                active adapter for all).
            kw: further arguments of the model's forward (``position_ids``, ``past_key_values``).
        """
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

    @torch.no_grad()
    def score_reference(
        self,
        batch: SequenceBatch,
        features: Literal["none", "action", "token"],
        ref_logprobs: bool,
        sampling: SamplingParams,
    ) -> tuple[Tensor | None, Tensor | None]:
        """One forward of the bare base (adapters disabled) that serves the critic and the KL anchor.

        Args:
            batch: prompts and sampled responses of ``S`` actions.
            features: ``"action"``: the state before the first action token, ``[S, H]`` (APPO);
                ``"token"``: the state before every action token, ``[S, L, H]`` (TPPO); ``"none"``.
            ref_logprobs: also return the reference policy's log-probs of the response tokens.
            sampling: the distribution those log-probs are taken under (the sampler's).

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
                ref, _ = self._token_logprobs(hidden, batch, sampling)
        feats = None
        if features == "action":
            feats = hidden[:, 0].float()
        elif features == "token":
            feats = hidden.float()
        return feats, ref

    def action_logprobs(
        self,
        batch: SequenceBatch,
        sampling: SamplingParams,
        entropy: bool = True,
        entropy_grad: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Token log-probs and entropies of the responses under the active adapter (with grad).

        One forward of the decoder; its final hidden states at response positions go through the
        output layer ``logit_chunk_tokens`` real tokens at a time (padding never does), so no
        full-vocabulary tensor of the whole batch exists, in the forward or the backward.

        Args:
            batch: prompts and responses of ``S`` actions.
            sampling: the distribution the actions were sampled from (the log-probs are under it).
            entropy: also return the entropies.
            entropy_grad: keep the entropy in the graph (only for an entropy bonus).

        Returns:
            ``(logprobs, entropy)``, both ``[S, L]``, zero where ``response_mask`` is 0;
            ``entropy`` is None unless asked for.
        """
        hidden = self._response_states(batch)
        return self._token_logprobs(hidden, batch, sampling, entropy, entropy_grad)

    def output_logits(self, hidden: Tensor, head: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """The output layer on final hidden states (``[..., H] -> [..., V]``), with the final
        logit soft-capping of the models that have one (Gemma 2 and 3).

        ``head``: the output layer as one adapter runs it (:func:`~marft.models.row_adapters.as_adapter`);
        None: the model's, under the active adapter.
        """
        base = self.policy.get_base_model()
        logits = (head or base.get_output_embeddings())(hidden)
        cap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @contextmanager
    def mixed(self, adapters: Sequence[str] | RowAdapters) -> Iterator[MixedForward]:
        """A block in which row ``s`` of every forward runs agent (or adapter) ``adapters[s]``
        (``__base__``: the bare base), by gathered LoRA (:func:`~marft.models.row_adapters.gathered_lora`),
        and every adapter named requires grad: one forward and one backward train several
        agents' adapters at once, each on its own rows.

        The block must hold the backward as well as the forward (a backward may recompute
        layers, with gradient checkpointing) and no optimizer step (the factors are gathered on
        entry). Yields the :class:`MixedForward` of the block.
        """
        if not isinstance(adapters, RowAdapters):
            adapters = RowAdapters.of([self.adapter_name(a) for a in adapters], self.device)
        params = [p for name in adapters.names if name != BASE for p in self.adapter_parameters(name)]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        try:
            with gathered_lora(self.policy, adapters, self.device) as rows:
                yield MixedForward(self, rows)
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)

    def _response_states(self, batch: SequenceBatch) -> Tensor:
        """``[S, L, H]``: :func:`~marft.models.sequences.response_states` under the active adapter."""
        return response_states(self.policy.get_base_model().get_decoder(), batch)

    def _token_logprobs(
        self,
        hidden: Tensor,
        batch: SequenceBatch,
        sampling: SamplingParams,
        entropy: bool = False,
        entropy_grad: bool = False,
        head: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """:func:`chunked_token_logprobs` of ``batch``'s responses from ``[S, L, H]`` states through
        ``head`` (None: the output layer under the active adapter)."""
        return chunked_token_logprobs(
            hidden,
            batch.response_ids,
            batch.response_mask,
            self.output_logits if head is None else partial(self.output_logits, head=head),
            sampling,
            self.logit_chunk_tokens,
            entropy=entropy,
            entropy_grad=entropy_grad,
        )


class MixedForward:
    """The forwards of a :meth:`TeamModel.mixed` block: each row under its own adapter.

    Args:
        model: the team model.
        rows: which adapter each row of the block's batches runs.
    """

    def __init__(self, model: TeamModel, rows: RowAdapters) -> None:
        self.model = model
        self.rows = rows

    def action_logprobs(
        self,
        batch: SequenceBatch,
        sampling: SamplingParams,
        entropy: bool = True,
        entropy_grad: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`TeamModel.action_logprobs` with row ``s`` under its adapter: one forward of the
        decoder for every row; the output layer once for all rows, or, where adapters change it
        (``modules_to_save`` or LoRA on it), once per adapter on its rows' tokens.

        Args:
            batch: ``S`` actions, row ``s`` of the block's rows.
            sampling: the distribution the actions were sampled from.
            entropy: also return the entropies.
            entropy_grad: keep the entropy in the graph.

        Returns:
            ``(logprobs, entropy)``, both ``[S, L]``, zero where ``response_mask`` is 0.
        """
        model = self.model
        hidden = model._response_states(batch)  # [S, L, H]
        head = model.policy.get_base_model().get_output_embeddings()
        if not adapter_specific(head) or len(self.rows.names) == 1:
            own = as_adapter(head, self.rows.names[0]) if adapter_specific(head) else None
            return model._token_logprobs(hidden, batch, sampling, entropy, entropy_grad, own)
        lps, ents = [], []
        for name, idx in zip(self.rows.names, self.rows.rows, strict=True):
            own = as_adapter(head, name)
            lp, ent = model._token_logprobs(
                hidden[idx], batch.take(idx), sampling, entropy, entropy_grad, own
            )
            lps.append(lp)
            ents.append(ent)
        back = torch.argsort(torch.cat(self.rows.rows))  # rows in the batch's order again
        logprobs = torch.cat(lps)[back]
        return logprobs, torch.cat(ents)[back] if entropy else None
