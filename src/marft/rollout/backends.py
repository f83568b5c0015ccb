"""Generation backends: turn prompts into sampled actions with their log-probs.

A backend is anything with the :class:`GenerationBackend` protocol: ``generate(prompts, adapter
per row, limits, keys) -> Generation`` and ``update_weights(version, weights)``. The collector
depends on this protocol only, so a backend may live in another engine or process.

The ``hf`` backend samples token by token with a KV cache on the team's shared base, one adapter
per row (PEFT mixed-adapter batches), and keeps only the log-prob of each sampled token under the
distribution it was drawn from, never the per-step full-vocabulary logits. It shares its weights
with the learner, so ``update_weights`` has nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import DynamicCache

from marft.config import SamplingConfig
from marft.models.logprobs import entropy_of, warp_logits
from marft.models.team_model import TeamModel, position_ids_from_mask
from marft.registry import Registry
from marft.rollout.streams import keyed_uniform, random_keys, sample_keyed
from marft.rollout.trajectory import Prompts

ROLLOUT_BACKENDS: Registry = Registry("rollout backend")
BASE = "__base__"
"""Adapter name of a row that must run on the bare base model (PEFT's convention)."""

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
class GenerationBackend(Protocol):
    """What the collector needs from a generation engine."""

    device: torch.device
    """Where prompts, limits and keys live."""
    shares_weights: bool
    """Whether it samples with the learner's own weights (else the learner recomputes old log-probs)."""

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

    def update_weights(
        self, version: int, weights: Callable[..., AdapterWeights], changed: Sequence[str] | None = None
    ) -> None:
        """Use the new weights of the ``changed`` agents (None: all) from now on; ``weights(roles)``
        gives them (called only by backends that keep their own copy). ``version`` counts updates."""
        ...

    def release(self) -> None:
        """A rollout ended: free what sampling holds until the next ``generate`` (may do nothing)."""
        ...


@ROLLOUT_BACKENDS.register("hf")
class HFBackend:
    """Token-by-token sampling with transformers' KV cache on the team's shared base model."""

    shares_weights = True
    needs_model_folder = False

    def __init__(self, model: TeamModel, sampling: SamplingConfig) -> None:
        self.model = model
        self.sampling = sampling
        self.device = model.device
        self.version = 0

    @classmethod
    def from_config(cls, model: TeamModel, cfg, model_folder: str | None = None) -> HFBackend:
        return cls(model, cfg.sampling)

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
        cfg = self.sampling
        logp = warp_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p).log_softmax(-1)
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
            limits: ``[S]`` longest action per row (default: ``sampling.max_new_tokens``).
            keys: ``[S]`` int64 random-stream keys, one per row (None: fresh ones).
        """
        model = self.model
        roles = [model.adapter_name(a) for a in adapters]  # agents sharing an adapter run as one
        S, device = prompts.ids.shape[0], prompts.ids.device
        mixed = len(set(roles)) > 1
        names = roles if mixed else None
        eos = torch.tensor(model.eos_ids, device=device)
        finished = torch.zeros(S, dtype=torch.bool, device=device)
        if limits is None:
            limits = torch.full((S,), self.sampling.max_new_tokens, device=device)
        limits = limits.to(device)
        keys = random_keys(S) if keys is None else keys
        tokens, logps, ents, alive = [], [], [], []
        cache = DynamicCache()
        ids, mask = prompts.ids, prompts.mask
        pos = position_ids_from_mask(mask)
        single = None if roles[0] == BASE else roles[0]
        with nullcontext() if mixed else model.adapter(single):
            for step in range(int(limits.max())):
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
                alive.append(~finished)
                tokens.append(tok.masked_fill(finished, model.tokenizer.pad_token_id))
                logps.append(logp.masked_fill(finished, 0.0))
                ents.append(ent.masked_fill(finished, 0.0))
                finished = finished | torch.isin(tok, eos) | (limits <= step + 1)
                if bool(finished.all()):
                    break
                ids = tok[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                pos = pos[:, -1:] + 1
        return Generation(
            response_ids=torch.stack(tokens, 1),
            response_mask=torch.stack(alive, 1).long(),
            logprobs=torch.stack(logps, 1),
            entropy=torch.stack(ents, 1),
        )
