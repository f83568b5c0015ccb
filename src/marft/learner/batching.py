"""Batching of the learner: what a policy update trains on (:class:`PolicyBatch`), micro-batches
that bound memory, and per-agent tensors stacked into ``[B, T, N, ...]``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from marft.algorithms import LossInputs, action_logprob, loss_inputs
from marft.models.sequences import SequenceBatch
from marft.rollout.trajectory import AgentActions


def sequences(actions: AgentActions) -> SequenceBatch:
    """An agent's prompts and responses as the model's :class:`SequenceBatch`."""
    return SequenceBatch(actions.prompt_ids, actions.prompt_mask, actions.response_ids, actions.response_mask)


def rows_of(seq: SequenceBatch, idx: Tensor) -> SequenceBatch:
    """Rows ``idx`` of a batch, trimmed of the padding columns they all share."""
    return seq.take(idx).trimmed()


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


@dataclass
class AgentTargets:
    """What one agent's policy update needs.

    Attributes:
        advantages: ``[S]`` per action, or ``[S, L]`` per token (``S = B * T``).
        sample_mask: ``[S]`` 1 where the agent really acted.
    """

    advantages: Tensor
    sample_mask: Tensor


@dataclass
class PolicyBatch:
    """What one adapter's update trains on: ``S`` rows, one agent's actions or several agents'
    stacked (:meth:`merge`).

    Attributes:
        actions: prompts and responses (``[S, L]`` response mask) and ``[S]`` word counts.
        old_logprobs: ``[S, L]`` token log-probs the ratio starts from (0 on padding).
        ref_logprobs: ``[S, L]`` under the reference policy, or None (no KL term).
        advantages: ``[S]`` per action, or ``[S, L]`` per token.
        sample_mask: ``[S]`` 1 where the agent really acted.
        groups: ``[S]`` int64, the group (task instance) of each row for a group-relative
            algorithm, the same numbering for every agent of the batch; None: rows are independent.
        kl_coef: the KL coefficient of the batch's agents (their ``kl_coef``, one for all of
            them), or None: ``algorithm.kl_coef``.
    """

    actions: AgentActions
    old_logprobs: Tensor
    ref_logprobs: Tensor | None
    advantages: Tensor
    sample_mask: Tensor
    groups: Tensor | None = None
    kl_coef: float | None = None

    @classmethod
    def merge(cls, batches: list[PolicyBatch]) -> PolicyBatch:
        """Agents' batches stacked row-wise (first agent's rows first, padding stays padding): what
        one adapter shared by these agents trains on. One batch: returned as it is."""
        if len(batches) == 1:
            return batches[0]
        refs = [b.ref_logprobs for b in batches]
        groups = [b.groups for b in batches]
        return cls(
            merge_actions([b.actions for b in batches]),
            cat_rows([b.old_logprobs for b in batches]),
            None if any(r is None for r in refs) else cat_rows(refs),
            cat_rows([b.advantages for b in batches]),
            cat_rows([b.sample_mask for b in batches]),
            None if any(g is None for g in groups) else torch.cat(groups),
            batches[0].kl_coef,  # agents that share an adapter share it (a config check)
        )

    def ratio_old_logprobs(self, agg_mode: str, norm: str) -> Tensor:
        """The old log-probs of ``agg_mode``'s ratio: ``[S]`` each action's (:func:`action_logprob`
        with ``norm``) for ``action-mean``, else the ``[S, L]`` token log-probs."""
        if agg_mode == "action-mean":
            return action_logprob(
                self.old_logprobs, self.actions.response_mask, self.actions.word_counts, norm
            )
        return self.old_logprobs

    def loss_inputs(
        self, agg_mode: str, idx: Tensor, rows: SequenceBatch, logprobs: Tensor, old: Tensor, norm: str
    ) -> LossInputs:
        """The policy loss's inputs for rows ``idx`` (:func:`marft.algorithms.loss_inputs`).

        Args:
            rows: those rows' sequences, trimmed (``[m, L]`` responses).
            logprobs: ``[m, L]`` their token log-probs under the current policy.
            old: :meth:`ratio_old_logprobs` of the whole batch.
        """
        return loss_inputs(
            agg_mode,
            logprobs,
            old[idx],
            self.advantages[idx],
            rows.response_mask,
            self.sample_mask[idx],
            self.actions.word_counts[idx],
            norm,
        )
