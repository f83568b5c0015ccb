"""Group baselines per agent and per turn (``algorithm.group_baseline``), against values computed
by hand."""

import math

import pytest
import torch

from marft.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    EstimatorParams,
    dr_grpo_advantages,
    grpo_advantages,
    masked_group_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from marft.algorithms.group_baselines import agent_turn_values, returns_to_go

S3 = 1 / math.sqrt(3)  # the std of (1, 0, 0): sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)


def test_masked_group_advantages_by_hand():
    """One group of 4, entry 2 not valid: the statistics are over 1, 0, 0."""
    values = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    valid = torch.tensor([[True], [True], [False], [True]])
    grpo = masked_group_advantages(values, valid, 4, "grpo").squeeze(1)
    torch.testing.assert_close(
        grpo, torch.tensor([(2 / 3) / S3, -(1 / 3) / S3, 0.0, -(1 / 3) / S3]), atol=1e-5, rtol=0
    )
    dr = masked_group_advantages(values, valid, 4, "dr_grpo").squeeze(1)
    torch.testing.assert_close(dr, torch.tensor([2 / 3, -1 / 3, 0.0, -1 / 3]))
    # leave one out: 1 - mean(0, 0); 0 - mean(1, 0); 0 - mean(1, 0)
    rloo = masked_group_advantages(values, valid, 4, "rloo").squeeze(1)
    torch.testing.assert_close(rloo, torch.tensor([1.0, -0.5, 0.0, -0.5]))
    # a lone valid entry has nothing to be compared with: 0
    lone = torch.tensor([[False], [True], [False], [False]])
    for kind in ("grpo", "dr_grpo", "rloo"):
        assert masked_group_advantages(values, lone, 4, kind).abs().max() == 0


def test_masked_equals_unmasked_when_every_entry_is_valid():
    torch.manual_seed(0)
    values = torch.randn(12, 3)
    valid = torch.ones(12, 3, dtype=torch.bool)
    for kind, fn in (
        ("grpo", grpo_advantages),
        ("dr_grpo", dr_grpo_advantages),
        ("rloo", rloo_advantages),
    ):
        torch.testing.assert_close(masked_group_advantages(values, valid, 4, kind), fn(values, 4))
    # reinforce++ normalises over the batch: column by column here
    want = torch.stack([reinforce_pp_advantages(values[:, k], 4) for k in range(3)], 1)
    torch.testing.assert_close(masked_group_advantages(values, valid, 4, "reinforce_pp"), want)


def test_returns_to_go_and_agent_turn_values():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    torch.testing.assert_close(returns_to_go(rewards), torch.tensor([[3.0, 2.0, 2.0], [3.0, 3.0, 0.0]]))
    mask = torch.ones(2, 3, 2)
    penalty = torch.full((2, 3, 2), 0.25)  # both agents, every step: 0.5 per step
    got = agent_turn_values(rewards, mask, penalty)
    torch.testing.assert_close(got[..., 0], torch.tensor([[1.5, 1.0, 1.5], [1.5, 2.0, -0.5]]))
    torch.testing.assert_close(got[..., 1], got[..., 0])


def routed(team_rewards: list[float], acted: list[list[int]]) -> AdvantageInputs:
    """One step, a group of 4: a router and two experts, each expert routed in some rollouts."""
    mask = torch.tensor(acted, dtype=torch.float32)[:, None, :]  # [4, 1, 3]
    team = torch.tensor(team_rewards)[:, None]
    return AdvantageInputs(
        rewards=team[..., None] * mask,
        team_rewards=team,
        dones=torch.ones(4, 1),
        action_mask=mask,
    )


def test_agent_baseline_compares_an_expert_with_its_own_rollouts():
    """Rewards 1, 0, 1, 1; expert a acted in rollouts 0 and 1, expert b in 2 and 3.

    ``episode``: mean 0.75, unbiased std 0.5: (0.5, -1.5, 0.5, 0.5) for every agent.
    ``agent``: the router as ``episode``; expert a over (1, 0): mean 0.5, std sqrt(0.5):
    (+-0.7071); expert b over (1, 1): no difference, 0."""
    inputs = routed([1.0, 0.0, 1.0, 1.0], [[1, 1, 0], [1, 1, 0], [1, 0, 1], [1, 0, 1]])
    grpo = ADVANTAGE_ESTIMATORS.get("grpo")
    episode = grpo(inputs, EstimatorParams(group_size=4)).advantages[:, 0, :]
    torch.testing.assert_close(
        episode, torch.tensor([0.5, -1.5, 0.5, 0.5])[:, None].expand(4, 3), atol=1e-5, rtol=0
    )
    agent = grpo(inputs, EstimatorParams(group_size=4, group_baseline="agent")).advantages[:, 0, :]
    torch.testing.assert_close(agent[:, 0], episode[:, 0], atol=1e-5, rtol=0)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(agent[:2, 1], torch.tensor([r, -r]), atol=1e-5, rtol=0)
    torch.testing.assert_close(agent[2:, 2], torch.zeros(2))
    assert agent[2:, 1].abs().max() == 0 and agent[:2, 2].abs().max() == 0  # not acted: 0


def test_agent_turn_baseline_credits_the_return_from_the_step_on():
    """Two rollouts of two steps, one agent: rewards (1, 0) and (0, 1). Both returns are 1
    (``episode``: 0 everywhere). From step 0 on: 1 and 1 (0); from step 1 on: 0 and 1 (grpo:
    -+0.7071)."""
    inputs = AdvantageInputs(
        rewards=torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]]),
        team_rewards=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        dones=torch.tensor([[0.0, 1.0], [0.0, 1.0]]),
        action_mask=torch.ones(2, 2, 1),
    )
    grpo = ADVANTAGE_ESTIMATORS.get("grpo")
    assert grpo(inputs, EstimatorParams(group_size=2)).advantages.abs().max() == 0
    adv = grpo(inputs, EstimatorParams(group_size=2, group_baseline="agent_turn")).advantages[..., 0]
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([[0.0, -r], [0.0, r]]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
@pytest.mark.parametrize("baseline", ["agent", "agent_turn"])
def test_a_static_one_step_team_gets_the_episode_advantages(name, baseline):
    """Every agent acts once in every rollout: all three baselines agree."""
    torch.manual_seed(1)
    team = torch.randint(0, 2, (8, 1)).float()
    inputs = AdvantageInputs(
        rewards=team[..., None].expand(8, 1, 3).clone(),
        team_rewards=team,
        dones=torch.ones(8, 1),
        action_mask=torch.ones(8, 1, 3),
        penalty=0.01 * torch.rand(8, 1, 3),
    )
    est = ADVANTAGE_ESTIMATORS.get(name)
    want = est(inputs, EstimatorParams(group_size=4)).advantages
    got = est(inputs, EstimatorParams(group_size=4, group_baseline=baseline)).advantages
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_per_agent_normalisation_by_hand():
    """Agent 0's real entries 1, 3 (mean 2, std sqrt(2)); agent 1's 10, 20, 30 (mean 20, std 10).
    Over the batch together, agent 0's entries would be scaled by the experts' spread."""
    from marft.algorithms import masked_normalize_per_agent

    x = torch.tensor([[[1.0, 10.0]], [[3.0, 20.0]], [[7.0, 30.0]]])  # [B=3, T=1, N=2]
    mask = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]], [[0.0, 1.0]]])
    got = masked_normalize_per_agent(x, mask)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(got[:, 0, 0], torch.tensor([-r, r, 0.0]))
    torch.testing.assert_close(got[:, 0, 1], torch.tensor([-1.0, 0.0, 1.0]))
    # [B, T, N, L] per-token values: the statistics span the steps and tokens of each agent; two
    # tokens per entry: agent 1's 10, 10, 20, 20, 30, 30 have mean 20 and unbiased std sqrt(80)
    tok = masked_normalize_per_agent(x[..., None].expand(3, 1, 2, 2), mask[..., None].expand(3, 1, 2, 2))
    torch.testing.assert_close(tok[:, 0, 1, 0], torch.tensor([-10.0, 0.0, 10.0]) / math.sqrt(80))
