"""GAE over ragged routes: each env copy's actual sequence of actions (dynamic routing).

Hand-computed values for routes of different lengths per env copy, an agent acting twice in one
team step (it then occupies two rounds of the step axis) and an agent that never acts; a naive
per-token loop checks the token-level version on the same routes.
"""

import pytest
import torch

from marft.algorithms.advantages import action_order, compute_agentwise_gae, compute_tokenwise_gae
from marft.algorithms.estimators import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    EstimatorParams,
    last_action_mask,
)

JUNK = 9.0  # values of slots that hold no action: they must not matter

# Agents: 0 = router, 1 = solver, 2 = checker.
# Copy 0, one team step over two rounds: router (call 0) -> solver (call 1) -> router again
# (call 2, round 1); the checker never acts; the episode ends there with reward 1 (on the last action).
# Copy 1: router (call 0) -> checker (call 1), episode ends in round 0 with reward 2; round 1 idle.
TURNS = torch.tensor([[[0, 1, -1], [2, -1, -1]], [[0, -1, 1], [-1, -1, -1]]])
DONES = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
REWARDS = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]])
VALUES = torch.tensor([[[0.5, 0.25, JUNK], [0.75, JUNK, JUNK]], [[0.1, JUNK, 0.3], [JUNK, JUNK, JUNK]]])
GAMMA, LAM = 0.5, 0.5


def test_action_order_follows_the_route_and_skips_agents_that_did_not_act():
    order = action_order(DONES, TURNS)
    # copy 0: (t0, router), (t0, solver), (t1, router); copy 1: (t0, router), (t0, checker)
    assert order.index[0, :3].tolist() == [0, 1, 3]
    assert order.index[1, :2].tolist() == [0, 2]
    assert order.valid.sum(1).tolist() == [3, 2]
    assert order.nonterminal[0, :3].tolist() == [True, True, False]  # the episode ends after round 1
    assert order.nonterminal[1, :2].tolist() == [True, False]


def test_agentwise_gae_on_ragged_routes_by_hand():
    adv, ret = compute_agentwise_gae(REWARDS, VALUES, DONES, torch.tensor([7.0, 7.0]), GAMMA, LAM, TURNS)
    # copy 0 backwards: router again: 1 - 0.75 = 0.25
    #   solver: delta = 0.5 * 0.75 - 0.25 = 0.125; adv = 0.125 + 0.25 * 0.25 = 0.1875
    #   router: delta = 0.5 * 0.25 - 0.5 = -0.375; adv = -0.375 + 0.25 * 0.1875 = -0.328125
    # copy 1: checker: 2 - 0.3 = 1.7; router: delta = 0.5 * 0.3 - 0.1 = 0.05; adv = 0.05 + 0.25 * 1.7 = 0.475
    want = torch.tensor([[[-0.328125, 0.1875, 0.0], [0.25, 0.0, 0.0]], [[0.475, 0.0, 1.7], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(adv, want)
    acted = TURNS >= 0
    torch.testing.assert_close(ret[acted], (want + VALUES)[acted])


def test_credit_crosses_team_steps_and_stops_at_episode_ends():
    # One copy, continuing: step 0 is router -> solver (round 0, not done); step 1 is router ->
    # router's pick checker (round 1), cut by nothing: bootstraps from last_values = 2.
    turns = torch.tensor([[[0, 1, -1], [2, -1, 3]]])
    dones = torch.tensor([[0.0, 0.0]])
    rewards = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    values = torch.tensor([[[0.0, 0.0, JUNK], [1.0, JUNK, 1.0]]])
    adv, _ = compute_agentwise_gae(rewards, values, dones, torch.tensor([2.0]), 1.0, 1.0, turns)
    # lam = gamma = 1: advantage = (sum of later rewards + last value) - own value
    torch.testing.assert_close(adv, torch.tensor([[[3.0, 3.0, 0.0], [1.0, 0.0, 1.0]]]))
    # The same with the episode ending after step 0: nothing flows back from step 1.
    adv, _ = compute_agentwise_gae(
        rewards, values, torch.tensor([[1.0, 0.0]]), torch.tensor([2.0]), 1.0, 1.0, turns
    )
    torch.testing.assert_close(adv[0, 0], torch.tensor([1.0, 1.0, 0.0]))


def test_static_grid_order_is_the_default():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 4, 2, generator=g), torch.randn(3, 4, 2, generator=g)
    dones = (torch.rand(3, 4, generator=g) < 0.3).float()
    last = torch.randn(3, generator=g)
    levels = torch.arange(4)[None, :, None] * 2 + torch.arange(2)[None, None, :]  # one call per level
    a, r = compute_agentwise_gae(rewards, values, dones, last, 0.9, 0.8)
    b, q = compute_agentwise_gae(rewards, values, dones, last, 0.9, 0.8, levels.expand(3, 4, 2))
    assert torch.equal(a, b) and torch.equal(r, q)


def _naive_token_gae(rewards, values, mask, dones, last_values, turns, gamma, lam, tg, tl):
    """Token by token, action by action, per env copy, in the order the actions happened."""
    B, T, N, L = values.shape
    adv = torch.zeros(B, T, N, L, dtype=torch.float64)
    for b in range(B):
        acts = sorted((t, int(turns[b, t, n]), n) for t in range(T) for n in range(N) if turns[b, t, n] >= 0)
        nxt_adv, nxt_val = 0.0, float(last_values[b])
        for i in range(len(acts) - 1, -1, -1):
            t, _, n = acts[i]
            t_next = acts[i + 1][0] if i + 1 < len(acts) else T
            cont = float(dones[b, t:t_next].sum() == 0)
            k_real = [k for k in range(L) if mask[b, t, n, k]]
            for k in reversed(k_real):
                v = float(values[b, t, n, k])
                if k == k_real[-1]:
                    delta = float(rewards[b, t, n]) + gamma * cont * nxt_val - v
                    a = delta + gamma * lam * cont * nxt_adv
                else:
                    delta = tg * float(values[b, t, n, k + 1]) - v
                    a = delta + tg * tl * a
                adv[b, t, n, k] = a
            nxt_adv, nxt_val = a, float(values[b, t, n, 0])
    return adv


@pytest.mark.parametrize("dones", [DONES, torch.zeros(2, 2)], ids=["episodes-end", "continuing"])
@pytest.mark.parametrize("tg,tl", [(1.0, 1.0), (0.9, 0.7)])
def test_tokenwise_gae_on_ragged_routes_matches_a_naive_loop(tg, tl, dones):
    g = torch.Generator().manual_seed(1)
    L = 3
    values = torch.randn(2, 2, 3, L, generator=g, dtype=torch.float64)
    lengths = torch.tensor([[[2, 3, 0], [1, 0, 0]], [[3, 0, 2], [0, 0, 0]]])
    mask = (torch.arange(L) < lengths[..., None]).double()
    adv, _ = compute_tokenwise_gae(
        REWARDS.double(), values, mask, dones, torch.tensor([7.0, 7.0]), 0.9, 0.8, tg, tl, TURNS
    )
    want = _naive_token_gae(REWARDS, values, mask, dones, [7.0, 7.0], TURNS, 0.9, 0.8, tg, tl)
    torch.testing.assert_close(adv, want)


def test_one_token_actions_give_agentwise_gae():
    mask = (TURNS >= 0).double()[..., None]
    tok, _ = compute_tokenwise_gae(
        REWARDS.double(),
        VALUES.double()[..., None],
        mask,
        DONES,
        torch.tensor([7.0, 7.0]),
        GAMMA,
        LAM,
        1.0,
        1.0,
        TURNS,
    )
    act, _ = compute_agentwise_gae(
        REWARDS.double(), VALUES.double(), DONES, torch.tensor([7.0, 7.0]), GAMMA, LAM, TURNS
    )
    torch.testing.assert_close(tok[..., 0], act)


def test_horizon_bootstrap_goes_to_the_last_action_of_the_step():
    assert last_action_mask(TURNS)[0].tolist() == [[False, True, False], [True, False, False]]
    assert last_action_mask(TURNS)[1].tolist() == [[False, False, True], [False, False, False]]
    inputs = AdvantageInputs(
        rewards=torch.zeros(2, 2, 3),
        team_rewards=torch.zeros(2, 2),
        dones=DONES,
        action_mask=(TURNS >= 0).float(),
        truncated=torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
        cut_values=torch.tensor([[0.0, 4.0], [0.0, 0.0]]),
        turns=TURNS,
    )
    got = inputs.penalised_rewards(0.5)
    assert got[0, 1].tolist() == [2.0, 0.0, 0.0] and got.abs().sum() == 2.0


def test_group_estimators_credit_every_action_of_a_ragged_route():
    # Two rollouts of one task: route lengths differ; each action gets its rollout's advantage.
    team = torch.tensor([[0.0, 1.0], [2.0, 0.0]])  # team reward where the team step ended
    inputs = AdvantageInputs(
        rewards=REWARDS, team_rewards=team, dones=DONES, action_mask=(TURNS >= 0).float(), turns=TURNS
    )
    out = ADVANTAGE_ESTIMATORS.get("dr_grpo")(inputs, EstimatorParams(group_size=2))
    assert out.advantages[0, 0, 0] == -0.5 and out.advantages[1, 0, 2] == 0.5
