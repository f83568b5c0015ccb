"""Random streams per env copy, so that what is sampled does not depend on how env copies are batched.

Every env copy owns two :class:`random.Random` streams seeded from ``(run seed, global env
index)``: its *sampling* stream (:func:`env_stream`), from which every action its agents sample
and every random route draws, and its *problem* stream (:func:`problem_stream`), from which its
resets draw their seeds. So env copy 5 samples the same tokens whether it runs in one process
beside 15 others or in the second of four rollout workers, and it meets the same sequence of
problems whatever its team draws: a team of two agents and one agent alone, run with the same
seed, train on the same problems (a paired comparison).

Token sampling is counter-based: row ``s`` of a generation call carries a 63-bit ``key`` drawn from
its env copy's stream, and the uniform number behind its ``i``-th token is a hash of ``(key, i)``
(:func:`keyed_uniform`). The token is then the inverse-CDF draw of that number under the row's
warped distribution (:func:`sample_keyed`): no generator state is shared between rows.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def env_stream(seed: int, index: int) -> random.Random:
    """The random stream of env copy ``index`` (global, 0-based) of a run seeded ``seed``."""
    return random.Random(f"marft-env/{seed}/{index}")  # a str seed hashes the same in every process


def problem_stream(seed: int, index: int) -> random.Random:
    """The stream of env copy ``index``'s reset seeds (global, 0-based) in a run seeded ``seed``."""
    return random.Random(f"marft-problems/{seed}/{index}")


def _fmix32(h: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in ``[0, 2**32)``.
    (Products may wrap in int64; only their low 32 bits are kept, which wrapping preserves.)"""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def keyed_uniform(keys: Tensor, counter: int) -> Tensor:
    """Uniform numbers in ``[0, 1)``, one per key, from a hash of ``(key, counter)``.

    Args:
        keys: ``[S]`` int64 keys in ``[0, 2**63)``.
        counter: the draw's index within each row's stream (the token position).

    Returns:
        ``[S]`` float64, a function of each row's key and ``counter`` only.
    """
    lo, hi = keys & _M32, (keys >> 32) & _M32
    c = _fmix32(torch.full_like(keys, (counter * 0x9E3779B9 + 0x7F4A7C15) & _M32))
    h1 = _fmix32(lo ^ _fmix32(hi ^ c))
    h2 = _fmix32(h1 ^ 0x68E31DA4 ^ c)
    # 53 random bits: 32 from h1, 21 from h2.
    return ((h1 << 21) + (h2 >> 11)).double() / float(2**53)


def sample_keyed(probs: Tensor, uniform: Tensor) -> Tensor:
    """Inverse-CDF sampling: one token per row of ``probs`` ``[S, V]`` from ``uniform`` ``[S]``.

    A token of zero probability is never drawn (``right=True`` skips flat stretches of the CDF).
    """
    cdf = probs.double().cumsum(-1)
    target = (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def draw_keys(streams: list[random.Random], rows: list[int], device: torch.device | str = "cpu") -> Tensor:
    """One 63-bit key per row, row ``s`` drawn from ``streams[rows[s]]`` (in row order)."""
    return torch.tensor([streams[b].getrandbits(63) for b in rows], dtype=torch.long, device=device)


def random_keys(n: int) -> Tensor:
    """``n`` fresh keys from torch's global RNG (for a caller without streams of its own)."""
    return torch.randint(0, 2**62, (n,), dtype=torch.long)
