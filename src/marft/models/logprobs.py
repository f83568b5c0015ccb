"""Log-prob helpers shared by the sampler and the learner.

The sampler and the learner must score actions under the *same* distribution, so both call
:func:`warp_logits`: the PPO ratio then compares like with like (temperature, and top-k/top-p
when they are on).

:func:`chunked_token_logprobs` takes log-probs and entropies from final hidden states without a
full-vocabulary tensor for a whole batch: only real response tokens reach the output layer, a
chunk of them at a time, and with a gradient each chunk's logits are recomputed in the backward
instead of being kept (the idea of chunked cross-entropy losses, e.g. Liger-Kernel's fused linear
cross-entropy, here with top-k/top-p warping and entropies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class SamplingParams:
    """The distribution actions are sampled from, and scored under: temperature, then top-k and
    top-p filtering (the defaults leave the model's distribution as it is).

    Attributes:
        temperature: softmax temperature (> 0).
        top_k: keep the k most likely tokens (0: off).
        top_p: nucleus mass (1.0: off).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    @classmethod
    def of(cls, sampling) -> SamplingParams:
        """The parameters of a config's ``sampling`` section (anything with these three fields)."""
        return cls(sampling.temperature, sampling.top_k, sampling.top_p)


def warp_logits(logits: Tensor, sampling: SamplingParams) -> Tensor:
    """Apply ``sampling``'s temperature, then its top-k and top-p filtering (filtered entries
    become -inf).

    Args:
        logits: ``[..., V]`` raw logits.
        sampling: the distribution to warp to (``SamplingParams()``: the logits as they are).

    Returns:
        ``[..., V]`` logits of the distribution that is actually sampled from (float32).
    """
    logits = logits.float()
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    top_k = sampling.top_k
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p; the top token always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def entropy_of(logp: Tensor) -> Tensor:
    """Entropy of each distribution given its log-probs (``[..., V] -> [...]``); tokens that
    top-k/top-p filtered out (log-prob -inf, probability 0) count 0, not ``0 * -inf``."""
    p = logp.exp()
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)


def chunked_token_logprobs(
    hidden: Tensor,
    tokens: Tensor,
    mask: Tensor,
    head: Callable[[Tensor], Tensor],
    sampling: SamplingParams,
    chunk_tokens: int = 0,
    entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each response token (and the entropy of its distribution) from hidden states.

    Only positions where ``mask`` is 1 go through ``head``, ``chunk_tokens`` of them at a time, so
    at most ``chunk_tokens x V`` logits (and the few same-sized temporaries of log-softmax,
    warping and entropy) exist at any moment. When autograd records (grad enabled), each chunk
    is checkpointed: its logits are recomputed in the backward, and the gradient reaches
    ``hidden`` (and ``head``'s parameters, if trainable) exactly as without chunking.

    Args:
        hidden: ``[S, L, H]`` final hidden state before each response token.
        tokens: ``[S, L]`` response token ids.
        mask: ``[S, L]`` 1 on real tokens.
        head: the output layer, ``[n, H] -> [n, V]`` raw logits.
        sampling: the sampling distribution (:func:`warp_logits`).
        chunk_tokens: tokens per chunk (0: all real tokens at once).
        entropy: also return entropies.
        entropy_grad: entropies in the graph (only for an entropy bonus); otherwise detached.

    Returns:
        ``(logprobs, entropy)``, ``[S, L]`` each, 0 where ``mask`` is 0; ``entropy`` is None unless
        asked for. Log-probs are floored at -1e4 (a sampled token that top-k/top-p now filters
        out stays finite).
    """
    real = mask.bool()
    h, tok = hidden[real], tokens[real]  # [n, H], [n]
    n = tok.shape[0]
    size = chunk_tokens if chunk_tokens > 0 else max(n, 1)
    record = torch.is_grad_enabled()
    lps, ents = [], []
    for start in range(0, n, size):
        step = _Chunk(head, sampling, entropy, entropy_grad)
        hs, ts = h[start : start + size], tok[start : start + size]
        out = checkpoint(step, hs, ts, use_reentrant=False) if record else step(hs, ts)
        lp, ent = out if entropy_grad else (out, step.entropy)
        lps.append(lp)
        ents.append(ent)
    zeros = torch.zeros(real.shape, dtype=torch.float32, device=hidden.device)
    logprobs = zeros.masked_scatter(real, torch.cat(lps).clamp(min=-1e4)) if lps else zeros
    if not entropy:
        return logprobs, None
    return logprobs, zeros.masked_scatter(real, torch.cat(ents)) if ents else zeros


class _Chunk:
    """One chunk's log-probs (the checkpointed function). A detached entropy is computed on the
    first call only and kept in :attr:`entropy`: the backward's recomputation skips it.

    Args:
        head: the output layer, ``[c, H] -> [c, V]`` raw logits.
        sampling: the distribution the log-probs are taken under (:func:`warp_logits`).
        entropy: compute the (detached) entropy too.
        grad: return the entropy in the graph, next to the log-probs.
    """

    def __init__(
        self, head: Callable[[Tensor], Tensor], sampling: SamplingParams, entropy: bool, grad: bool
    ) -> None:
        self.head = head
        self.sampling = sampling
        self.want = entropy
        self.grad = grad
        self.entropy: Tensor | None = None

    def __call__(self, h: Tensor, tok: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``[c]`` log-probs of tokens ``tok`` (``[c]``) from states ``h`` (``[c, H]``); with
        ``grad``, ``(log-probs, entropies)``."""
        logits = warp_logits(self.head(h), self.sampling)  # [c, V] float32
        logz = torch.logsumexp(logits, dim=-1, keepdim=True)
        lp = logits.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - logz.squeeze(-1)
        if self.grad:
            return lp, entropy_of(logits - logz)
        if self.want and self.entropy is None:
            with torch.no_grad():
                self.entropy = entropy_of(logits - logz)
        return lp
