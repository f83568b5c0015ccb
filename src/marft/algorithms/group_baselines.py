"""Group baselines per agent and per turn: which rollouts of a group an action is compared with
(``algorithm.group_baseline``). Pure functions on tensors.

A group-relative estimator compares a rollout's return with the other rollouts of its group (the
``G`` rollouts of one task instance). Three ways to form that comparison in a team:

* ``episode``: every action of a rollout gets the rollout's advantage against the whole group
  (joint credit; the estimators' own functions in :mod:`marft.algorithms.advantages`).
* ``agent``: agent ``n``'s advantage is formed over the rollouts of the group in which ``n``
  acted, with their statistics (mean, and std where the estimator divides by it) taken over those
  rollouts only: agent-wise normalisation (Dr. MAS). An agent that acts in every rollout (a static
  graph, one step) gets exactly what ``episode`` gives; an agent that acts in some rollouts only
  (a routed expert) is compared with the rollouts it was part of.
* ``agent_turn``: agent ``n``'s action at step ``t`` is compared with the same agent's actions at
  step ``t`` of the group's other rollouts, on the return from step ``t`` on (AT-GRPO's groups by
  agent and turn): a late action is not credited with rewards that came before it.
* ``nested``: the group is a tree (:mod:`marft.rollout.nested`): with branching ``[k_0, ...,
  k_{D-1}]`` each depth-``d`` action heads a subtree of ``s_d = k_{d+1} ... k_{D-1}`` rollouts.
  Its advantage is its subtree's mean return compared with its ``k_d`` sibling subtrees' (the
  estimator's arithmetic on the subtree means): for the deepest agent its return against its
  siblings', for a planner "was this plan better than the others for the same problem". Unbiased
  and critic-free credit per depth of the graph.

Shapes: ``B`` rollouts (rows ``g*G .. g*G+G-1`` share a task instance), ``K`` columns compared
separately (agents, or steps x agents), ``T`` steps, ``N`` agents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

GroupBaseline = Literal["episode", "agent", "agent_turn", "nested"]
"""``algorithm.group_baseline``'s values."""

GROUP_BASELINES: tuple[str, ...] = ("episode", "agent", "agent_turn", "nested")

MaskedKind = Literal["grpo", "dr_grpo", "rloo", "reinforce_pp"]
"""Which group-relative estimator's arithmetic :func:`masked_group_advantages` applies."""


def _per_group(x: Tensor, group_size: int) -> Tensor:
    """``[B, K]`` -> ``[B / G, G, K]``."""
    if x.shape[0] % group_size:
        raise ValueError(f"batch of {x.shape[0]} rollouts is not a multiple of group_size={group_size}")
    return x.reshape(x.shape[0] // group_size, group_size, x.shape[1])


def masked_group_advantages(
    values: Tensor, valid: Tensor, group_size: int, kind: MaskedKind, eps: float = 1e-6
) -> Tensor:
    """A group-relative estimator's advantages, each column's statistics over its valid entries.

    Args:
        values: ``[B, K]`` the return each entry is credited with.
        valid: ``[B, K]`` bool, True where the entry is a real action to compare.
        group_size: G.
        kind: ``grpo`` ``(v - mean) / (std + eps)`` (unbiased std; 0 for a lone entry),
            ``dr_grpo`` ``v - mean``, ``rloo`` ``v - mean of the other valid entries`` (0 for a lone
            entry), ``reinforce_pp`` ``(v - mean) / (std + eps)`` over the column's valid entries
            of the whole batch.

    Returns:
        ``[B, K]`` advantages, 0 where not valid. With every entry valid, each kind equals its
        unmasked function of :mod:`marft.algorithms.advantages` up to float rounding.
    """
    m = valid.to(values.dtype)
    if kind == "reinforce_pp":
        n = m.sum(0, keepdim=True)
        mean = (values * m).sum(0, keepdim=True) / n.clamp(min=1.0)
        var = (((values - mean) * m) ** 2).sum(0, keepdim=True) / (n - 1).clamp(min=1.0)
        return (values - mean) / (var.sqrt() + eps) * m
    v, w = _per_group(values, group_size), _per_group(m, group_size)
    n = w.sum(1, keepdim=True)  # [B/G, 1, K] valid entries per group and column
    total = (v * w).sum(1, keepdim=True)
    mean = total / n.clamp(min=1.0)
    if kind == "grpo":
        var = (((v - mean) * w) ** 2).sum(1, keepdim=True) / (n - 1).clamp(min=1.0)
        adv = (v - mean) / (var.sqrt() + eps)
    elif kind == "dr_grpo":
        adv = v - mean
    elif kind == "rloo":
        others = (total - v) / (n - 1).clamp(min=1.0)
        adv = torch.where(n > 1, v - others, torch.zeros_like(v))
    else:
        raise ValueError(f"unknown group estimator {kind!r}; known: grpo, dr_grpo, rloo, reinforce_pp")
    return (adv * w).reshape(values.shape)


def returns_to_go(rewards: Tensor) -> Tensor:
    """``[B, T, ...]`` -> the sum of the rewards from step ``t`` to the end, at each ``t``."""
    return rewards.flip(1).cumsum(1).flip(1)


def agent_turn_values(
    team_rewards: Tensor,
    action_mask: Tensor,
    penalty: Tensor | None = None,
    per_agent: Tensor | None = None,
) -> Tensor:
    """``[B, T, N]`` the return each action is credited with under ``agent_turn``: from its step on.

    Args:
        team_rewards: ``[B, T]`` the team's reward at each step.
        action_mask: ``[B, T, N]`` 1 where the agent acted.
        penalty: ``[B, T, N]`` KL penalty per action, subtracted (the team's whole, as the team's
            return subtracts it), or None.
        per_agent: ``[B, T, N]`` each agent's own penalised rewards (per-agent rewards), or None.
    """
    mask = action_mask.to(team_rewards.dtype)
    if per_agent is not None:
        return returns_to_go(per_agent * mask)
    team = team_rewards
    if penalty is not None:
        team = team - (penalty * mask).sum(2)
    return returns_to_go(team)[:, :, None].expand_as(mask)


def nested_advantages(
    returns: Tensor, depths: Sequence[int], branching: Sequence[int], kind: MaskedKind
) -> tuple[Tensor, list[float]]:
    """Advantages of nested groups: each depth's actions against their sibling subtrees.

    Args:
        returns: ``[B]`` each rollout's return; rows ``g*G .. g*G+G-1`` are group ``g``'s tree, in
            the order of :mod:`marft.rollout.nested` (a depth-``d`` action's subtree is ``s_d``
            consecutive rows).
        depths: ``[N]`` each agent's depth in the graph.
        branching: ``[D]`` the branching factor of each depth (``G`` their product).
        kind: the estimator's arithmetic (:func:`masked_group_advantages`) on subtree means.

    Returns:
        ``([B, N]`` advantages, the same on every row of a subtree (only its first row holds the
        action), ``[D]`` the share of each depth's actions whose advantage is not 0: how often an
        action there changed the outcome against its siblings).
    """
    B = returns.shape[0]
    out = returns.new_zeros(B, len(depths))
    moved = []
    for d, k in enumerate(branching):  # a handful of depths, not samples
        s = math.prod(branching[d + 1 :])
        means = returns.reshape(B // s, s).mean(1, keepdim=True)  # [B / s, 1] subtree means
        adv = masked_group_advantages(means, torch.ones_like(means, dtype=torch.bool), k, kind)
        moved.append(float((adv.abs() > 1e-8).float().mean()))
        rows = adv[:, 0].repeat_interleave(s)
        for n, depth in enumerate(depths):
            if depth == d:
                out[:, n] = rows
    return out, moved


def answer_changes(answers: Tensor, branching: Sequence[int]) -> list[tuple[float, float]]:
    """How often the graded answer changes with an upper depth's action, in nested groups.

    For each depth ``d`` above the last, two shares over pairs of rollouts of one depth-``d``
    parent (``s_{d-1}`` consecutive rows, the whole group at depth 0):

    * *across*: pairs whose depth-``d`` actions differ (different plans), answers not equal;
    * *within*: pairs under the same depth-``d`` action (one plan), answers not equal: what the
      deeper agents' sampling alone changes.

    A plan that steers the answer shows *across* above *within*; equal shares say the answer
    does not depend on the plan.

    Args:
        answers: ``[B]`` int64, an id per distinct answer of each rollout (equal ids: equal
            answers); negative where the rollout has none to compare (a dropped episode).
        branching: ``[D]`` the branching factor of each depth (``G`` their product); rows are
            in the order of :mod:`marft.rollout.nested`.

    Returns:
        ``[D - 1]`` ``(across, within)`` pairs, each NaN where no pair of that kind exists.
    """
    B = answers.shape[0]
    out = []
    for d in range(len(branching) - 1):  # a handful of depths, not samples
        parent = math.prod(branching[d:])  # rows under one depth-(d-1) action
        s = math.prod(branching[d + 1 :])  # rows under one depth-d action
        a = answers.reshape(B // parent, parent)
        valid = (a >= 0)[:, :, None] & (a >= 0)[:, None, :]  # [n, P, P]
        differ = (a[:, :, None] != a[:, None, :]) & valid
        subtree = torch.arange(parent, device=answers.device) // s
        same_subtree = subtree[:, None] == subtree[None, :]
        distinct = ~torch.eye(parent, dtype=torch.bool, device=answers.device)
        shares = []
        for kind in (~same_subtree, same_subtree & distinct):
            pairs = valid & kind
            n = int(pairs.sum())
            shares.append(float((differ & kind).sum()) / n if n else math.nan)
        out.append((shares[0], shares[1]))
    return out
