"""Log-prob helpers shared by the sampler and the learner.

The sampler and the learner must score actions under the *same* distribution, so both call
:func:`warp_logits`: the PPO ratio then compares like with like (temperature, and top-k/top-p
when they are on).
"""

from __future__ import annotations

import torch
from torch import Tensor


def warp_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Apply temperature, then top-k and top-p filtering (filtered entries become -inf).

    Args:
        logits: ``[..., V]`` raw logits.

    Returns:
        ``[..., V]`` logits of the distribution that is actually sampled from (float32).
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p; the top token always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-prob of ``tokens`` under ``logits`` (``[S, L, V]`` -> ``[S, L]``), no entropy."""
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def logprobs_and_entropy(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Log-prob of ``tokens`` and the entropy of each distribution, without keeping ``[.., V]`` tensors.

    Args:
        logits: ``[S, L, V]`` already-warped logits.
        tokens: ``[S, L]`` token ids.

    Returns:
        ``(logprobs, entropy)``, both ``[S, L]``.
    """
    logz = torch.logsumexp(logits, dim=-1, keepdim=True)
    logp = logits - logz
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    p = logp.exp()
    # 0 * -inf from filtered tokens must count as 0.
    entropy = -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)
    return token_logp, entropy
