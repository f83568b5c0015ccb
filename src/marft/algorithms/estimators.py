"""Advantage estimators behind one signature, chosen by name.

Every estimator takes an :class:`AdvantageInputs` (what one iteration's trajectories and the
critic give) and :class:`EstimatorParams`, and returns :class:`AdvantageOutput`. Each is registered
with what it needs: the critic's values per action (agent-wise GAE), per token (token-wise GAE), or
none (group-relative estimators, which need ``group_size`` rollouts per task instance).

Shapes: ``B`` env copies, ``T`` steps, ``N`` agents in acting order, ``L`` tokens of an action.

Example:
    >>> est = ADVANTAGE_ESTIMATORS.get("grpo")
    >>> est.values, est.grouped
    ('none', True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from marft.algorithms.advantages import (
    compute_agentwise_gae,
    compute_tokenwise_gae,
    dr_grpo_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from marft.algorithms.group_baselines import (
    GroupBaseline,
    MaskedKind,
    agent_turn_values,
    answer_changes,
    masked_group_advantages,
    nested_advantages,
)
from marft.registry import Registry

CriticValues = Literal["none", "action", "token"]


@dataclass
class AdvantageInputs:
    """What an estimator may use.

    Attributes:
        rewards: ``[B, T, N]`` reward of each action (the env's, after reward assignment).
        team_rewards: ``[B, T]`` the team's reward at each step.
        dones: ``[B, T]`` 1 where the episode ended after step t.
        action_mask: ``[B, T, N]`` 1 where the agent really acted.
        penalty: ``[B, T, N]`` a KL penalty per action, subtracted from the rewards (None: none).
        per_agent_rewards: the env rewarded each agent on its own (group estimators then use each
            agent's own return instead of the team's).
        values: the critic's ``[B, T, N]`` (per action) or ``[B, T, N, L]`` (per token) values.
        last_values: ``[B]`` value of the observation after the last step.
        truncated: ``[B, T]`` 1 where ``env.horizon`` cut an episode (``dones`` is 1 there too).
        cut_values: ``[B, T]`` value of the next observation at those cuts (0 elsewhere): a time
            limit is not a terminal state, so GAE bootstraps from it.
        token_mask: ``[B, T, N, L]`` 1 on real tokens (token-level values only).
        turns: ``[B, T, N]`` the generation call of each action (-1: none): GAE runs through the
            actions in the order they happened (:func:`~marft.algorithms.advantages.action_order`).
            None: every agent acted at every step, in acting order.
        answers: ``[B, T]`` int64 an id per distinct answer the env extracted at each team step
            (-1 where no step ended; equal ids, equal answers): nested groups report how often the
            answer changes with a plan (:func:`~marft.algorithms.group_baselines.answer_changes`).
    """

    rewards: Tensor
    team_rewards: Tensor
    dones: Tensor
    action_mask: Tensor
    penalty: Tensor | None = None
    per_agent_rewards: bool = False
    values: Tensor | None = None
    last_values: Tensor | None = None
    truncated: Tensor | None = None
    cut_values: Tensor | None = None
    token_mask: Tensor | None = None
    turns: Tensor | None = None
    answers: Tensor | None = None

    def penalised_rewards(self, gamma: float) -> Tensor:
        """``[B, T, N]`` rewards minus the KL penalty, plus ``gamma * V(next observation)`` on the
        reward of the step's last action where the horizon cut an episode."""
        rewards = self.rewards if self.penalty is None else self.rewards - self.penalty
        if self.cut_values is not None:
            rewards = rewards.clone()
            bootstrap = gamma * self.truncated * self.cut_values  # [B, T]
            if self.turns is None:
                rewards[:, :, -1] += bootstrap
            else:
                rewards += bootstrap[..., None] * last_action_mask(self.turns).to(rewards.dtype)
        return rewards


@dataclass(frozen=True)
class EstimatorParams:
    """Discounts, group size and group baseline (``algorithm.*`` in the config)."""

    gamma: float = 1.0
    lam: float = 0.95
    token_gamma: float = 1.0
    token_lam: float = 1.0
    group_size: int = 1
    group_baseline: GroupBaseline = "episode"
    branching: tuple[int, ...] = ()
    """``nested``: the branching factor of each depth of the graph (product: ``group_size``)."""
    depths: tuple[int, ...] = ()
    """``nested``: each agent's depth in the graph, in acting order."""


@dataclass
class AdvantageOutput:
    """Advantages (``[B, T, N]`` per action or ``[B, T, N, L]`` per token), the critic's regression
    targets when there is a critic, and scalar metrics."""

    advantages: Tensor
    returns: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimator:
    """A registered estimator and what it needs.

    Attributes:
        fn: ``(inputs, params) -> AdvantageOutput``.
        values: the critic values it needs: ``none``, per ``action``, or per ``token``.
        grouped: it needs ``group_size`` rollouts per task instance (whole episodes, in groups).
    """

    fn: Callable[[AdvantageInputs, EstimatorParams], AdvantageOutput]
    values: CriticValues
    grouped: bool

    def __call__(self, inputs: AdvantageInputs, params: EstimatorParams) -> AdvantageOutput:
        return self.fn(inputs, params)


ADVANTAGE_ESTIMATORS: Registry[Estimator] = Registry("advantage estimator")


def _register(name: str, values: CriticValues, grouped: bool):
    def deco(fn):
        ADVANTAGE_ESTIMATORS.register(name)(Estimator(fn, values, grouped))
        return fn

    return deco


@_register("gae", values="action", grouped=False)
def gae_estimator(inputs: AdvantageInputs, params: EstimatorParams) -> AdvantageOutput:
    """Agent-wise GAE (MARFT's APPO) on ``[B, T, N]`` values: :func:`compute_agentwise_gae`."""
    adv, ret = compute_agentwise_gae(
        inputs.penalised_rewards(params.gamma),
        inputs.values,
        inputs.dones,
        inputs.last_values,
        params.gamma,
        params.lam,
        inputs.turns,
    )
    return AdvantageOutput(adv, ret)


@_register("token_gae", values="token", grouped=False)
def token_gae_estimator(inputs: AdvantageInputs, params: EstimatorParams) -> AdvantageOutput:
    """Token-wise GAE (MARFT's TPPO) on ``[B, T, N, L]`` values: :func:`compute_tokenwise_gae`."""
    adv, ret = compute_tokenwise_gae(
        inputs.penalised_rewards(params.gamma),
        inputs.values,
        inputs.token_mask,
        inputs.dones,
        inputs.last_values,
        params.gamma,
        params.lam,
        params.token_gamma,
        params.token_lam,
        inputs.turns,
    )
    return AdvantageOutput(adv, ret)


def last_action_mask(turns: Tensor) -> Tensor:
    """``[B, T, N]`` True at the last action of each (env copy, step): the latest generation call,
    then the last agent in acting order; all False where nobody acted."""
    N = turns.shape[-1]
    key = torch.where(turns >= 0, turns * N + torch.arange(N, device=turns.device), -1)
    return (key == key.max(-1, keepdim=True).values) & (turns >= 0)


def last_answers(answers: Tensor) -> Tensor:
    """``[B, T]`` answer ids per team step (-1: no step) -> ``[B]`` the id of each rollout's last
    step (-1 for a rollout without one)."""
    T = answers.shape[1]
    steps = torch.arange(T, device=answers.device).expand_as(answers)
    last = torch.where(answers >= 0, steps, -1).max(1).values  # [B]
    picked = answers.gather(1, last.clamp(min=0)[:, None])[:, 0]
    return torch.where(last >= 0, picked, -1)


def rollout_returns(inputs: AdvantageInputs) -> Tensor:
    """Return of each rollout: ``[B]`` team returns, or ``[B, N]`` per agent with per-agent rewards;
    the KL penalty of every agent's actions is subtracted."""
    mask = inputs.action_mask
    if inputs.per_agent_rewards:
        return (inputs.penalised_rewards(1.0) * mask).sum(1)
    returns = inputs.team_rewards.sum(1)  # 0 at steps where no team step ended
    if inputs.penalty is not None:
        returns = returns - (inputs.penalty * mask).sum((1, 2))
    return returns


def _group(fn: Callable[[Tensor, int], Tensor], kind: MaskedKind):
    """An estimator from a ``(returns [B] or [B, N], group_size) -> same shape`` function: every
    action of a rollout gets its rollout's advantage (joint credit), or, with
    ``params.group_baseline`` ``agent`` / ``agent_turn``, an advantage formed per agent / per
    agent and step (:mod:`marft.algorithms.group_baselines`, the same arithmetic as ``kind``)."""

    def estimator(inputs: AdvantageInputs, params: EstimatorParams) -> AdvantageOutput:
        B, T, N = inputs.rewards.shape
        returns = rollout_returns(inputs)
        std = returns.reshape(-1, params.group_size, *returns.shape[1:]).std(1).mean()
        metrics = {"group_return_std": float(std)}
        if params.group_baseline == "episode":
            adv = fn(returns, params.group_size)
            if adv.dim() == 1:
                adv = adv[:, None].expand(B, N)
            return AdvantageOutput(adv[:, None, :].expand(B, T, N), None, metrics)
        if params.group_baseline == "nested":
            if returns.dim() == 2:
                raise ValueError("nested groups credit the team's return; use a team reward")
            adv, moved = nested_advantages(returns, params.depths, params.branching, kind)
            metrics.update({f"nested_effect/depth{d}": share for d, share in enumerate(moved)})
            if inputs.answers is not None:
                changes = answer_changes(last_answers(inputs.answers), params.branching)
                for d, (across, within) in enumerate(changes):
                    metrics[f"answer_change/depth{d}"] = across
                    metrics[f"answer_change_within/depth{d}"] = within
            return AdvantageOutput(adv[:, None, :].expand(B, T, N), None, metrics)
        acted = inputs.action_mask > 0  # [B, T, N]
        if params.group_baseline == "agent":
            per_agent = returns if returns.dim() == 2 else returns[:, None].expand(B, N)
            adv = masked_group_advantages(per_agent, acted.any(1), params.group_size, kind)
            return AdvantageOutput(adv[:, None, :].expand(B, T, N), None, metrics)
        own = inputs.penalised_rewards(1.0) if inputs.per_agent_rewards else None
        values = agent_turn_values(inputs.team_rewards, inputs.action_mask, inputs.penalty, own)
        adv = masked_group_advantages(
            values.reshape(B, T * N), acted.reshape(B, T * N), params.group_size, kind
        )
        return AdvantageOutput(adv.reshape(B, T, N), None, metrics)

    estimator.__doc__ = fn.__doc__
    return estimator


for _name, _fn in (
    ("grpo", grpo_advantages),
    ("dr_grpo", dr_grpo_advantages),
    ("rloo", rloo_advantages),
    ("reinforce_pp", reinforce_pp_advantages),
):
    ADVANTAGE_ESTIMATORS.register(_name)(Estimator(_group(_fn, _name), values="none", grouped=True))
