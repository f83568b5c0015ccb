"""Generation backends: turn prompts into sampled actions with their log-probs.

A backend is a class registered in :data:`ROLLOUT_BACKENDS` (``sampling.backend`` names it) that
keeps two protocols. The class is a :class:`BackendFactory`: ``needs_model_folder``,
``check_config(cfg)`` (refuse what it cannot serve before anything loads) and ``from_config(model,
cfg, model_folder)``. Its instances keep :class:`GenerationBackend`: ``generate(prompts, adapter
per row, limits, keys) -> Generation`` and ``release()``, and, like every sampler that may hold
weights of its own, :class:`WeightSync`: ``shares_weights`` and ``update_weights(version, weights,
changed)``. :mod:`marft.compose` checks a backend class against both once, naming a missing member. The
collector depends on :class:`GenerationBackend` only, so a backend may live in another engine or
process. The ``vllm`` backend is registered by its import path: vLLM's module is imported only
when it is chosen.

The ``hf`` backend samples token by token with a KV cache on the team's shared base, one adapter
per row, and keeps only the log-prob of each sampled token under the
distribution it was drawn from, never the per-step full-vocabulary logits. Its decode loop is
``fast`` by default (:mod:`marft.models.decoding`: each row's LoRA gathered once per call and
applied as batched matmuls, a KV cache allocated once) or ``eager`` (PEFT's mixed-adapter
forward, transformers' concatenating cache; ``sampling.decode``). It shares its weights with the
learner, so ``update_weights`` has nothing to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import DynamicCache

from marft.config import Config
from marft.models.decoding import float32_decode_attention, growing_cache, threaded_linears
from marft.models.logprobs import SamplingParams, entropy_of, warp_logits
from marft.models.row_adapters import BASE, gathered_lora, gathered_lora_unsupported
from marft.models.sequences import position_ids_from_mask
from marft.models.team_model import TeamModel
from marft.registry import Registry
from marft.rollout.streams import keyed_uniform, random_keys, sample_keyed
from marft.rollout.trajectory import Prompts

AdapterWeights = Mapping[str, Mapping[str, Tensor]]
"""Per agent (adapter name), its adapter as PEFT saves it (``adapter_model.safetensors`` keys)."""


@dataclass
class Generation:
    """Sampled actions of ``S`` prompts.

    Attributes:
        response_ids: ``[S, L]`` tokens, padded after the end-of-turn token.
        response_mask: ``[S, L]`` 1 on real tokens (the end-of-turn token included).
        logprobs: ``[S, L]`` log-prob of each token under the sampling distribution (0 on padding).
        entropy: ``[S, L]`` entropy of that distribution at each token (0 on padding), or None
            when the engine does not report it (vLLM; the scoring phase then computes it).
    """

    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    entropy: Tensor | None = None


@runtime_checkable
class WeightSync(Protocol):
    """What receives the learner's adapters after each update: a generation backend, or the Ray
    rollout workers' sampler (:class:`~marft.distributed.rollout.RayRollout`)."""

    shares_weights: bool
    """Whether it samples with the learner's own weights (else the learner recomputes old log-probs)."""

    def update_weights(
        self, version: int, weights: Callable[..., AdapterWeights], changed: Sequence[str] | None = None
    ) -> None:
        """Use the new weights of the ``changed`` agents (None: all) from now on; ``weights(roles)``
        gives them (called only by samplers that keep their own copy). ``version`` counts updates."""
        ...


@runtime_checkable
class GenerationBackend(WeightSync, Protocol):
    """What the collector needs from a generation engine (and, as a :class:`WeightSync`, what the
    trainer hands each update)."""

    device: torch.device
    """Where prompts, limits and keys live."""

    def generate(
        self,
        prompts: Prompts,
        adapters: Sequence[str],
        limits: Tensor | None = None,
        keys: Tensor | None = None,
    ) -> Generation:
        """Sample one action per prompt, row ``s`` with adapter ``adapters[s]`` (``BASE``: none),
        at most ``limits[s]`` tokens; its random draws are a function of ``keys[s]`` alone
        (:mod:`marft.rollout.streams`; None: fresh keys from torch's global RNG)."""
        ...

    def release(self) -> None:
        """A rollout ended: free what sampling holds until the next ``generate`` (may do nothing)."""
        ...


class BackendFactory(Protocol):
    """How a backend is made from a run's config: what a class registered in
    :data:`ROLLOUT_BACKENDS` is (its class attribute and classmethods keep this protocol)."""

    needs_model_folder: bool
    """Whether the engine loads the base model from a folder (for the built-in tiny model,
    :func:`marft.compose.build_backend` saves it to one first)."""

    def check_config(self, cfg: Config) -> None:
        """Refuse a config this backend cannot serve, before anything loads.

        Raises:
            ConfigError: naming the key and the alternative.
        """
        ...

    def from_config(
        self, model: TeamModel, cfg: Config, model_folder: str | None = None
    ) -> GenerationBackend:
        """The backend of a run: ``model`` is the team model (tokenizer, adapters), ``model_folder``
        the base model's folder when ``needs_model_folder`` (else None)."""
        ...


ROLLOUT_BACKENDS: Registry[BackendFactory] = Registry("rollout backend")
"""``sampling.backend`` -> backend class. ``hf`` is defined here; ``vllm`` is imported when chosen."""
ROLLOUT_BACKENDS.register_path("vllm", "marft.rollout.vllm_backend:VLLMBackend")


@ROLLOUT_BACKENDS.register("hf")
class HFBackend:
    """Token-by-token sampling with transformers' KV cache on the team's shared base model.

    Args:
        model: the team model (its adapters are the agents).
        sampling: the distribution tokens are drawn from.
        max_new_tokens: the longest action, where ``generate`` is given no limits.
        decode: ``fast`` or ``eager`` (see the module docstring); ``fast`` falls back to ``eager``
            for a model it does not serve, with a warning that says why.

    Attributes:
        fast: whether ``generate`` takes the fast path (for a model in eval mode).
    """

    shares_weights = True
    needs_model_folder = False

    def __init__(
        self, model: TeamModel, sampling: SamplingParams, max_new_tokens: int, decode: str = "fast"
    ) -> None:
        self.model = model
        self.sampling = sampling
        self.max_new_tokens = max_new_tokens
        self.device = model.device
        self.version = 0
        why = gathered_lora_unsupported(model.policy) if decode == "fast" else None
        if why is not None:
            warnings.warn(
                f"sampling.decode=fast does not serve this model ({why}); decoding eagerly", stacklevel=2
            )
        self.fast = decode == "fast" and why is None

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """The HF backend serves whatever the team model loads: nothing to refuse."""

    @classmethod
    def from_config(cls, model: TeamModel, cfg: Config, model_folder: str | None = None) -> HFBackend:
        """The backend of a run with ``sampling``'s distribution and action length (``model_folder``
        is not used: this backend samples with the team model itself)."""
        return cls(model, SamplingParams.of(cfg.sampling), cfg.sampling.max_new_tokens, cfg.sampling.decode)

    def update_weights(
        self, version: int, weights: Callable[..., AdapterWeights], changed: Sequence[str] | None = None
    ) -> None:
        """Nothing to copy: this backend samples with the learner's own adapters."""
        self.version = version

    def release(self) -> None:
        """Nothing is held between rollouts."""

    def _sample(self, logits: Tensor, keys: Tensor, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """One token per row from ``[S, V]`` logits: ``(token, its log-prob, entropy)``, each ``[S]``,
        under the warped distribution (temperature, top-k, top-p); row s's draw is a function
        of ``(keys[s], step)`` only, so it does not depend on the other rows of the batch."""
        logp = warp_logits(logits, self.sampling).log_softmax(-1)
        tok = sample_keyed(logp.exp(), keyed_uniform(keys, step))
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1), entropy_of(logp)

    @torch.no_grad()
    def generate(
        self,
        prompts: Prompts,
        adapters: Sequence[str],
        limits: Tensor | None = None,
        keys: Tensor | None = None,
    ) -> Generation:
        """Sample one action per row, row ``s`` with the adapter ``adapters[s]``.

        Args:
            prompts: ``[S, P]`` left-padded prompts.
            adapters: ``S`` agents or adapter names (``"__base__"``: the bare base model).
            limits: ``[S]`` longest action per row (default: ``max_new_tokens``).
            keys: ``[S]`` int64 random-stream keys, one per row (None: fresh ones).
        """
        model = self.model
        roles = [model.adapter_name(a) for a in adapters]  # agents sharing an adapter run as one
        S, device = prompts.ids.shape[0], prompts.ids.device
        mixed = len(set(roles)) > 1
        if limits is None:
            limits = torch.full((S,), self.max_new_tokens, device=device)
        limits = limits.to(device)
        keys = random_keys(S) if keys is None else keys
        single = None if roles[0] == BASE else roles[0]
        # A batch of one agent runs under its adapter on both paths: PEFT's active adapter also
        # decides which tensors require grad, and the rollout leaves it as the eager path does.
        with nullcontext() if mixed else model.adapter(single):
            if self.fast and not model.policy.training:
                cache = growing_cache(prompts.ids.shape[1] + int(limits.max()))
                with (
                    gathered_lora(model.policy, roles, device),
                    threaded_linears(model.policy),
                    float32_decode_attention(model.policy),
                ):
                    return self._decode(prompts, None, limits, keys, cache)
            return self._decode(prompts, roles if mixed else None, limits, keys, DynamicCache())

    def _decode(
        self, prompts: Prompts, names: list[str] | None, limits: Tensor, keys: Tensor, cache: DynamicCache
    ) -> Generation:
        """The token-by-token loop under the active adapter(s), one KV-cached forward a step,
        until every row has ended its turn or reached its limit.

        Args:
            prompts: ``[S, P]`` left-padded prompts.
            names: ``S`` adapter names of a mixed-adapter batch (None: the active adapter).
            limits: ``[S]`` longest action per row.
            keys: ``[S]`` random-stream keys.
            cache: an empty KV cache.
        """
        model = self.model
        steps = _Steps(
            eos=torch.tensor(model.eos_ids, device=limits.device),
            limits=limits,
            pad=model.tokenizer.pad_token_id,
            finished=torch.zeros(limits.shape[0], dtype=torch.bool, device=limits.device),
        )
        ids = prompts.ids
        length = prompts.mask.shape[1]
        steps_max = int(limits.max())
        # The mask of the prompt and every new token, allocated once; step t reads its first columns.
        full_mask = torch.cat([prompts.mask, prompts.mask.new_ones(prompts.mask.shape[0], steps_max)], 1)
        mask = full_mask[:, :length]
        pos = position_ids_from_mask(mask)
        for step in range(steps_max):
            out = model.forward_logits(
                ids,
                mask,
                keep=1,
                adapter_names=names,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            tok, logp, ent = self._sample(out.logits[:, -1], keys, step)
            if steps.add(tok, logp, ent, step):
                break
            ids = tok[:, None]
            mask = full_mask[:, : length + step + 1]
            pos = pos[:, -1:] + 1
        return steps.generation()


@dataclass
class _Steps:
    """What the sampling loop keeps of each step: the sampled tokens, their log-probs and
    entropies (``[S]`` each, padding once a row has ended), and which rows were still acting.

    Attributes:
        eos: end-of-turn token ids.
        limits: ``[S]`` longest action per row.
        pad: the padding token id.
        finished: ``[S]`` rows that have ended their turn.
    """

    eos: Tensor
    limits: Tensor
    pad: int
    finished: Tensor
    tokens: list[Tensor] = field(default_factory=list)
    logps: list[Tensor] = field(default_factory=list)
    ents: list[Tensor] = field(default_factory=list)
    alive: list[Tensor] = field(default_factory=list)

    def add(self, tok: Tensor, logp: Tensor, ent: Tensor, step: int) -> bool:
        """Keep step ``step``'s draws (``[S]`` each); whether every row has now ended."""
        self.alive.append(~self.finished)
        self.tokens.append(tok.masked_fill(self.finished, self.pad))
        self.logps.append(logp.masked_fill(self.finished, 0.0))
        self.ents.append(ent.masked_fill(self.finished, 0.0))
        self.finished = self.finished | torch.isin(tok, self.eos) | (self.limits <= step + 1)
        return bool(self.finished.all())

    def generation(self) -> Generation:
        """The steps as ``[S, L]`` tensors."""
        return Generation(
            response_ids=torch.stack(self.tokens, 1),
            response_mask=torch.stack(self.alive, 1).long(),
            logprobs=torch.stack(self.logps, 1),
            entropy=torch.stack(self.ents, 1),
        )
