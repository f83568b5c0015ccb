"""The trajectory: the only thing that crosses from rollout to training.

It holds what generation knows (token ids and masks, the sampled tokens' log-probs and entropies,
rewards, dones, who acted in which turn, the prompts of the observations a critic bootstraps
from, transcripts) and nothing that needs a model to compute (no critic features, no reference
log-probs: those come from the scoring phase). Every field is a plain tensor or plain data, so a
trajectory can be sent between processes as it is.

Shapes: ``B`` env copies, ``T`` steps, ``N`` agents in acting order; per agent, row ``b * T + t``
holds env copy b's action at step t; ``P`` prompt and ``L`` response tokens. A "step" of the ``T``
axis is an acting round: one team step of the env, unless an agent acts again within the team step
(dynamic routing), which opens a new round; ``step_ends`` marks where team steps end.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from marft.envs.base import summarize_metrics

if TYPE_CHECKING:
    pass


@dataclass
class Prompts:
    """Tokenised prompts: ``ids`` and ``mask``, both ``[S, P]``, left-padded."""

    ids: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]


@dataclass
class AgentActions:
    """One agent's ``B * T`` actions (row ``b * T + t``; padding where it did not act).

    Attributes:
        prompt_ids: ``[B*T, P]`` left-padded prompts.
        prompt_mask: ``[B*T, P]`` 1 on real prompt tokens.
        response_ids: ``[B*T, L]`` right-padded sampled tokens.
        response_mask: ``[B*T, L]`` 1 on real tokens (the end-of-turn token included).
        logprobs: ``[B*T, L]`` log-prob of each sampled token under the distribution it was drawn
            from (temperature, top-k, top-p applied); 0 on padding.
        entropy: ``[B*T, L]`` entropy of that distribution at each token; 0 on padding, and 0
            everywhere when the backend does not report it (the scoring phase then computes it).
        word_counts: ``[B*T]`` words in each decoded action (at least 1).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    entropy: Tensor
    word_counts: Tensor


@dataclass
class Trajectory:
    """One iteration's trajectories of ``B`` env copies over ``T`` steps.

    Attributes:
        agents: per agent (acting order), its actions.
        rewards: ``[B, T, N]`` reward of each action (after ``env.reward_assignment``).
        team_rewards: ``[B, T]`` the team's reward at each step.
        dones: ``[B, T]`` 1 where the episode ended after step t (or was dropped).
        action_mask: ``[B, T, N]`` 1 where the agent acted and the env stepped on its action.
        turns: ``[B, T, N]`` the id of the generation call in which the agent acted at step t
            (``team step * turns per step + turn``, increasing in time; -1: it did not act). Rows
            of one call were generated in one batch, agents in acting order and env copies
            ascending; scoring rebuilds exactly those batches, and credit follows this order
            (:func:`~marft.algorithms.advantages.action_order`).
        step_ends: ``[B, T]`` 1 where a team step of env copy b ended at step t and the env stepped
            on the joint action (all of them, unless the team routes and an agent acts twice).
        truncated: ``[B, T]`` 1 where ``env.horizon`` cut an episode that the env had not ended.
        cut_index: ``[C, 2]`` (env copy, step) of each such cut.
        cut_prompts: the first agent's prompts of the next observation at each cut (what a critic
            bootstraps from), or None when there were no cuts.
        next_prompts: the first agent's prompts of the observation after the last step, ``[B, P]``
            (continuing collection; None for whole episodes).
        critic_prompts: a team of several bases with a critic: per agent (acting order), its
            prompts rendered with the critic base's tokenizer, ``[B*T, P]`` like its actions
            (left-padded; all padding where it did not act), or None for an agent on the critic's
            base (its own prompts serve). None for a team of one base.
        per_agent_rewards: the env rewarded each agent separately.
        failed_episodes: episodes dropped because the env raised.
        episode_returns: team return of each episode that ended here; ``episode_lengths`` their steps.
        transcripts: full conversations of some finished episodes.
        timings: seconds inside collection (``generate``, ``env``).
        env_metrics: the envs' own counters (``pop_metrics``), summed over copies.
        routes: routing teams: the route of each team step taken (``lead>solver>lead``).
        route_metrics: routing teams: ``router_actions``, ``route_invalid`` (router outputs that
            named no route), ``route_cut`` (steps cut at ``team.routing.max_actions``).
        version: the adapter version it was sampled with (checked by distributed rollouts).
        answers: ``[B, T]`` int64 the id of the answer the env extracted at each team step
            (:func:`answer_id`; -1 where no step ended): equal answers, equal ids, in every
            collector.
    """

    agents: list[AgentActions]
    rewards: Tensor
    team_rewards: Tensor
    dones: Tensor
    action_mask: Tensor
    turns: Tensor
    step_ends: Tensor
    truncated: Tensor
    cut_index: Tensor
    cut_prompts: Prompts | None = None
    next_prompts: Prompts | None = None
    critic_prompts: list[Prompts | None] | None = None
    per_agent_rewards: bool = False
    failed_episodes: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    transcripts: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    env_metrics: dict[str, float] = field(default_factory=dict)
    routes: list[str] = field(default_factory=list)
    route_metrics: dict[str, float] = field(default_factory=dict)
    version: int = 0
    answers: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(B, T, N)``."""
        B, T, N = self.rewards.shape
        return B, T, N

    def to(self, device: torch.device | str) -> Trajectory:
        """This trajectory with every tensor on ``device``."""
        moved = {f.name: _move(getattr(self, f.name), device) for f in dataclasses.fields(self)}
        return Trajectory(**moved)

    def route_summary(self) -> dict[str, float]:
        """Routing teams' metrics: the share of team steps that took each route
        (``route_share/<route>``), router outputs that named no route (``route_invalid``, a share
        of router actions), steps cut at ``max_actions`` (``route_cut``) and actions per team step
        (``actions_per_step``); empty for static teams."""
        if not self.route_metrics:
            return {}
        n = max(len(self.routes), 1)
        out = {f"route_share/{r}": c / n for r, c in sorted(Counter(self.routes).items())}
        routers = self.route_metrics.get("router_actions", 0.0)
        out["route_invalid"] = self.route_metrics.get("route_invalid", 0.0) / routers if routers else 0.0
        out["route_cut"] = self.route_metrics.get("route_cut", 0.0) / n
        out["actions_per_step"] = float(self.action_mask.sum()) / max(self.env_steps, 1)
        return out

    def env_summary(self) -> dict[str, float]:
        """The envs' counters for a metrics row (``X.sum`` / ``X.n`` pairs as means:
        :func:`~marft.envs.base.summarize_metrics`)."""
        return summarize_metrics(self.env_metrics)

    @property
    def env_steps(self) -> int:
        """Team steps actually taken (idle steps of finished episodes do not count)."""
        return int(self.step_ends.sum())


def answer_id(answer: str | None) -> int:
    """A stable id of an env's extracted answer (``StepResult.answer``): 0 for none, else a
    positive 62-bit hash of the stripped text, the same in every process (rollout workers'
    trajectories merge without a shared table)."""
    if answer is None:
        return 0
    digest = hashlib.blake2b(answer.strip().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2 or 1


def _move(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_move(v, device) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)(
            **{f.name: _move(getattr(value, f.name), device) for f in dataclasses.fields(value)}
        )
    return value


def pad_last(x: Tensor, width: int, value: float, left: bool) -> Tensor:
    """Pad the last dim of ``x`` to ``width`` with ``value``, on the left or the right."""
    extra = width - x.shape[-1]
    return F.pad(x, (extra, 0) if left else (0, extra), value=value) if extra else x


def pad_stack(tensors: Sequence[Tensor], value: float, left: bool) -> Tensor:
    """Stack ``[B, *]`` tensors of varying width along a new dim 1, padding the last dim."""
    width = max(t.shape[-1] for t in tensors)
    return torch.stack([pad_last(t, width, value, left) for t in tensors], dim=1)
