"""Trajectories and collector states of env-copy slices, joined into those of the whole run
(and split again): what lets K rollout workers stand in for one collector.

A merged trajectory equals, tensor for tensor, what one collector over all env copies would have
produced from the same samples: steps are padded to the longest slice, prompts are left-padded and
responses right-padded to the widest, horizon cuts are put back in step-major order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from marft.rollout.trajectory import AgentActions, Prompts, Trajectory, pad_last


def _pad_steps(x: Tensor, T: int, value: float) -> Tensor:
    """``[B, T_k, ...]`` -> ``[B, T, ...]``, new steps filled with ``value``."""
    if x.shape[1] == T:
        return x
    fill = torch.full((x.shape[0], T - x.shape[1], *x.shape[2:]), value, dtype=x.dtype, device=x.device)
    return torch.cat([x, fill], dim=1)


def _cat_prompts(parts: Sequence[Prompts | None], pad_id: int) -> Prompts | None:
    real = [p for p in parts if p is not None]
    if not real:
        return None
    width = max(p.ids.shape[-1] for p in real)
    return Prompts(
        torch.cat([pad_last(p.ids, width, pad_id, left=True) for p in real]),
        torch.cat([pad_last(p.mask, width, 0, left=True) for p in real]),
    )


def _merge_agent(
    actions: Sequence[AgentActions], shapes: Sequence[tuple[int, int]], T: int, pad_id: int
) -> AgentActions:
    def rows(name: str, fill: float, left: bool = False, wide: bool = True) -> Tensor:
        out = []
        width = max(getattr(a, name).shape[-1] for a in actions) if wide else None
        for a, (B_k, T_k) in zip(actions, shapes, strict=True):
            x = getattr(a, name)
            x = x.reshape(B_k, T_k, *x.shape[1:])
            if wide:
                x = pad_last(x, width, fill, left)
            out.append(_pad_steps(x, T, fill).flatten(0, 1))
        return torch.cat(out)

    return AgentActions(
        prompt_ids=rows("prompt_ids", pad_id, left=True),
        prompt_mask=rows("prompt_mask", 0, left=True),
        response_ids=rows("response_ids", pad_id),
        response_mask=rows("response_mask", 0),
        logprobs=rows("logprobs", 0.0),
        entropy=rows("entropy", 0.0),
        word_counts=rows("word_counts", 1.0, wide=False),
    )


def _summed(counters) -> dict[str, float]:
    """Counters of several slices added up, key by key (a key any slice has)."""
    out: dict[str, float] = {}
    for c in counters:
        for k, v in c.items():
            out[k] = out.get(k, 0.0) + v
    return out


def merge_trajectories(parts: Sequence[Trajectory], offsets: Sequence[int], pad_id: int) -> Trajectory:
    """The trajectory of all env copies from those of consecutive slices.

    Args:
        parts: one trajectory per slice, in env order.
        offsets: the global index of each slice's first env copy.
        pad_id: the tokenizer's padding token (fills steps a slice did not take).
    """
    if len(parts) == 1:
        return parts[0]
    shapes = [(p.shape[0], p.shape[1]) for p in parts]
    T = max(t for _, t in shapes)
    N = parts[0].shape[2]
    B = sum(b for b, _ in shapes)

    def cat(name: str, fill: float) -> Tensor:
        return torch.cat([_pad_steps(getattr(p, name), T, fill) for p in parts])

    cuts = torch.cat(
        [
            p.cut_index + torch.tensor([off, 0], dtype=p.cut_index.dtype, device=p.cut_index.device)
            for p, off in zip(parts, offsets, strict=True)
        ]
    )
    cut_prompts = _cat_prompts([p.cut_prompts for p in parts], pad_id)
    if len(cuts):  # one collector records cuts step by step, env copies ascending within a step
        order = torch.argsort(cuts[:, 1] * B + cuts[:, 0])
        cuts = cuts[order]
        cut_prompts = Prompts(cut_prompts.ids[order], cut_prompts.mask[order])
    timings: dict[str, float] = {}
    for p in parts:
        for k, v in p.timings.items():
            timings[k] = max(timings.get(k, 0.0), v)  # slices run side by side: the slowest counts
    return Trajectory(
        agents=[_merge_agent([p.agents[n] for p in parts], shapes, T, pad_id) for n in range(N)],
        rewards=cat("rewards", 0.0),
        team_rewards=cat("team_rewards", 0.0),
        dones=cat("dones", 0.0),
        action_mask=cat("action_mask", 0.0),
        turns=cat("turns", -1),
        step_ends=cat("step_ends", 0.0),
        truncated=cat("truncated", 0.0),
        cut_index=cuts,
        cut_prompts=cut_prompts,
        next_prompts=_cat_prompts([p.next_prompts for p in parts], pad_id),
        per_agent_rewards=parts[0].per_agent_rewards,
        failed_episodes=sum(p.failed_episodes for p in parts),
        episode_returns=[r for p in parts for r in p.episode_returns],
        episode_lengths=[n for p in parts for n in p.episode_lengths],
        transcripts=[t for p in parts for t in p.transcripts],
        timings=timings,
        env_metrics=_summed(p.env_metrics for p in parts),
        routes=[r for p in parts for r in p.routes],
        route_metrics=_summed(p.route_metrics for p in parts),
        version=parts[0].version,
        answers=None if any(p.answers is None for p in parts) else cat("answers", -1),
    )


def join_collector_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collector states of consecutive slices -> the state of all env copies (every entry is a
    list over env copies)."""
    return {key: [x for s in states for x in s[key]] for key in states[0]}


def split_collector_state(state: dict[str, Any], slices: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """The state of all env copies -> one per slice ``(lo, hi)``."""
    return [{key: list(value[lo:hi]) for key, value in state.items()} for lo, hi in slices]
