"""Batching helpers of the learner: micro-batches that bound memory, per-action log-probs, and
per-agent tensors stacked into ``[B, T, N, ...]``."""

from __future__ import annotations

import torch
from torch import Tensor

from marft.models.team_model import SequenceBatch
from marft.rollout.trajectory import AgentActions


def sequences(actions: AgentActions) -> SequenceBatch:
    """An agent's prompts and responses as the model's :class:`SequenceBatch`."""
    return SequenceBatch(actions.prompt_ids, actions.prompt_mask, actions.response_ids, actions.response_mask)


def rows_of(seq: SequenceBatch, idx: Tensor) -> SequenceBatch:
    """Rows ``idx`` of a batch, trimmed of the padding columns they all share."""
    return SequenceBatch(
        seq.prompt_ids[idx], seq.prompt_mask[idx], seq.response_ids[idx], seq.response_mask[idx]
    ).trimmed()


def action_logprob(token_logprobs: Tensor, response_mask: Tensor, word_counts: Tensor, norm: str) -> Tensor:
    """Per-action log-prob from token log-probs.

    Args:
        token_logprobs: ``[S, L]`` (0 on padding).
        response_mask: ``[S, L]``.
        word_counts: ``[S]`` words in each decoded action.
        norm: ``sum``, ``token_mean`` (divide by token count) or ``word_mean`` (by word count).

    Returns:
        ``[S]``.
    """
    total = token_logprobs.sum(-1)
    if norm == "token_mean":
        return total / response_mask.sum(-1).clamp(min=1).to(total.dtype)
    if norm == "word_mean":
        return total / word_counts.clamp(min=1).to(total.dtype)
    return total


def micro_batches(idx: Tensor, seq: SequenceBatch, max_rows: int, max_tokens: int = 0) -> list[Tensor]:
    """Split minibatch indices into micro-batches that bound memory.

    Each micro-batch holds at most ``max_rows`` rows and, if ``max_tokens > 0``, at most
    ``max_tokens`` padded tokens (rows x (longest prompt + longest response) after trimming), so
    that agents late in a chain, whose prompts hold every earlier output, do not need more memory.
    With a token cap the rows are first sorted by length (longest first, ties in the given order):
    rows of similar length then share a micro-batch, so little padding is computed and the cap is
    filled by real tokens. A minibatch's gradient is a sum over its micro-batches, so the order
    does not change it.

    Args:
        idx: ``[M]`` row indices (kept in this order when there is no token cap).
        seq: the agent's sequences (for lengths).
        max_rows: row cap.
        max_tokens: padded-token cap (0: off).
    """
    if max_tokens <= 0:
        return list(idx.split(max_rows))
    p_all, r_all = seq.prompt_mask[idx].sum(-1), seq.response_mask[idx].sum(-1)
    order = torch.argsort(p_all + r_all, descending=True, stable=True)
    idx = idx[order]
    p_len, r_len = p_all[order].tolist(), r_all[order].tolist()
    groups: list[list[int]] = []
    rows: list[int] = []
    p_max = r_max = 0
    for k, (p, r) in enumerate(zip(p_len, r_len, strict=True)):
        p_new, r_new = max(p_max, p), max(r_max, r)
        if rows and (len(rows) >= max_rows or (len(rows) + 1) * (p_new + r_new) > max_tokens):
            groups.append(rows)
            rows, p_new, r_new = [], p, r
        rows.append(k)
        p_max, r_max = p_new, r_new
    groups.append(rows)
    return [idx[torch.tensor(g, device=idx.device)] for g in groups]


def cat_rows(parts: list[Tensor], left: bool = False) -> Tensor:
    """``[S_i, W_i, ...]`` tensors stacked along rows into ``[sum S_i, max W_i, ...]``, zero-padded
    on the right (on the left with ``left``, for left-padded prompts); 1-D tensors just stacked."""
    if parts[0].dim() == 1:
        return torch.cat(parts)
    W = max(x.shape[1] for x in parts)
    out = []
    for x in parts:
        pad = x.new_zeros((x.shape[0], W - x.shape[1], *x.shape[2:]))
        out.append(torch.cat([pad, x] if left else [x, pad], dim=1))
    return torch.cat(out)


def merge_actions(actions: list[AgentActions]) -> AgentActions:
    """Several agents' actions as one batch, rows of the first agent first (for one adapter that
    they share, ``lora.shared``); padding stays padding (masks 0)."""
    if len(actions) == 1:
        return actions[0]
    return AgentActions(
        prompt_ids=cat_rows([a.prompt_ids for a in actions], left=True),
        prompt_mask=cat_rows([a.prompt_mask for a in actions], left=True),
        response_ids=cat_rows([a.response_ids for a in actions]),
        response_mask=cat_rows([a.response_mask for a in actions]),
        logprobs=cat_rows([a.logprobs for a in actions]),
        entropy=cat_rows([a.entropy for a in actions]),
        word_counts=cat_rows([a.word_counts for a in actions]),
    )


def stack_agents(tensors: list[Tensor], B: int, T: int, fill: float = 0.0) -> Tensor:
    """Per-agent ``[B*T, L_i, ...]`` tensors -> ``[B, T, N, L, ...]`` padded to the longest ``L_i``."""
    L = max(x.shape[1] for x in tensors)
    padded = []
    for x in tensors:
        pad = torch.full((x.shape[0], L - x.shape[1], *x.shape[2:]), fill, dtype=x.dtype, device=x.device)
        padded.append(torch.cat([x, pad], dim=1).reshape(B, T, L, *x.shape[2:]))
    return torch.stack(padded, dim=2)
