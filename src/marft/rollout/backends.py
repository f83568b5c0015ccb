"""Generation backends: turn prompts into sampled actions with their log-probs.

The ``hf`` backend samples token by token with a KV cache on the shared base, one adapter per row
(PEFT mixed-adapter batches), and keeps only the log-prob of each sampled token under the
distribution it was drawn from, never the per-step full-vocabulary logits.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from marft.config import SamplingConfig
from marft.models.logprobs import warp_logits
from marft.models.team_model import TeamModel, position_ids_from_mask
from marft.registry import Registry

ROLLOUT_BACKENDS: Registry = Registry("rollout backend")
BASE = "__base__"
"""Adapter name of a row that must run on the bare base model (PEFT's convention)."""


@dataclass
class Generation:
    """Sampled actions of ``S`` prompts.

    Attributes:
        response_ids: ``[S, L]`` tokens, padded after the end-of-turn token.
        response_mask: ``[S, L]`` 1 on real tokens (the end-of-turn token included).
        logprobs: ``[S, L]`` log-prob of each token under the sampling distribution (0 on padding).
        entropy: ``[S, L]`` entropy of that distribution at each token (0 on padding).
    """

    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    entropy: Tensor


@ROLLOUT_BACKENDS.register("hf")
class HFBackend:
    """Token-by-token sampling with transformers' KV cache on the team's shared base model."""

    def __init__(self, model: TeamModel, sampling: SamplingConfig) -> None:
        self.model = model
        self.sampling = sampling

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        roles: list[str],
        generator: torch.Generator | None = None,
        max_new_tokens: Tensor | None = None,
    ) -> Generation:
        """Sample one action per row, row ``s`` with the adapter of ``roles[s]``.

        Args:
            input_ids: ``[S, P]`` left-padded prompts.
            attention_mask: ``[S, P]``.
            roles: ``S`` adapter names (``"__base__"``: the bare base model).
            generator: RNG for sampling (on the model's device).
            max_new_tokens: ``[S]`` longest action per row (default: ``sampling.max_new_tokens``).
        """
        cfg, model = self.sampling, self.model
        S = input_ids.shape[0]
        device = input_ids.device
        mixed = len(set(roles)) > 1
        names = roles if mixed else None
        eos = torch.tensor(model.eos_ids, device=device)
        pad = model.tokenizer.pad_token_id
        finished = torch.zeros(S, dtype=torch.bool, device=device)
        limits = (
            max_new_tokens
            if max_new_tokens is not None
            else torch.full((S,), cfg.max_new_tokens, device=device)
        )
        limits = limits.to(device)
        tokens, logps, ents, alive = [], [], [], []
        cache = DynamicCache()
        ids, mask = input_ids, attention_mask
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
                logp = warp_logits(out.logits[:, -1], cfg.temperature, cfg.top_k, cfg.top_p).log_softmax(-1)
                p = logp.exp()
                tok = torch.multinomial(p, 1, generator=generator).squeeze(-1)
                live = ~finished
                alive.append(live)
                tokens.append(tok.masked_fill(finished, pad))
                logps.append(logp.gather(-1, tok[:, None]).squeeze(-1).masked_fill(finished, 0.0))
                ents.append((-(p * logp.masked_fill(p == 0, 0.0)).sum(-1)).masked_fill(finished, 0.0))
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
