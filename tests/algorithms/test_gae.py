import pytest
import torch

from marft.algorithms import compute_agentwise_gae


def reference_gae(rewards, values, dones, last_values, gamma, lam):
    """The spec written as plain per-sample loops (slow, obviously right)."""
    B, T, N = rewards.shape
    adv = torch.zeros(B, T, N, dtype=torch.float64)
    for b in range(B):
        next_adv = 0.0
        for t in reversed(range(T)):
            for i in reversed(range(N)):
                if i < N - 1:
                    nv, nt = values[b, t, i + 1], 1.0
                else:
                    nv = values[b, t + 1, 0] if t + 1 < T else last_values[b]
                    nt = 1.0 - dones[b, t]
                delta = rewards[b, t, i] + gamma * nt * nv - values[b, t, i]
                next_adv = delta + gamma * lam * nt * next_adv
                adv[b, t, i] = next_adv
    return adv, adv + values


def test_hand_worked_values():
    # B=1, T=2, N=2, gamma = lam = 0.5; the episode ends after step 1.
    rewards = torch.tensor([[[0.0, 1.0], [0.0, 2.0]]])
    values = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    dones = torch.tensor([[0.0, 1.0]])
    last = torch.tensor([5.0])
    adv, ret = compute_agentwise_gae(rewards, values, dones, last, gamma=0.5, lam=0.5)
    # (1,1): delta = 2 + 0 * 5 - 0.4 = 1.6                      adv = 1.6
    # (1,0): delta = 0 + 0.5 * 0.4 - 0.3 = -0.1                 adv = -0.1 + 0.25 * 1.6 = 0.3
    # (0,1): delta = 1 + 0.5 * 0.3 - 0.2 = 0.95 (not done)     adv = 0.95 + 0.25 * 0.3 = 1.025
    # (0,0): delta = 0 + 0.5 * 0.2 - 0.1 = 0                    adv = 0 + 0.25 * 1.025 = 0.25625
    expected = torch.tensor([[[0.25625, 1.025], [0.3, 1.6]]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_done_cuts_only_between_steps():
    rewards = torch.tensor([[[0.0, 1.0], [0.0, 2.0]]])
    values = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    dones = torch.tensor([[1.0, 0.0]])
    last = torch.tensor([5.0])
    adv, _ = compute_agentwise_gae(rewards, values, dones, last, gamma=0.5, lam=0.5)
    # (1,1): delta = 2 + 0.5 * 5 - 0.4 = 4.1                    adv = 4.1 (bootstraps: not done)
    # (1,0): delta = 0 + 0.5 * 0.4 - 0.3 = -0.1                 adv = -0.1 + 0.25 * 4.1 = 0.925
    # (0,1): done after step 0 -> delta = 1 - 0.2 = 0.8         adv = 0.8 (nothing flows back)
    # (0,0): inside the step nothing is cut: delta = 0.1 - 0.1 = 0, adv = 0.25 * 0.8 = 0.2
    torch.testing.assert_close(adv, torch.tensor([[[0.2, 0.8], [0.925, 4.1]]]))


def test_single_agent_is_ordinary_gae():
    # N = 1 reduces to CleanRL's GAE: gamma = 0.9, lam = 1 gives discounted returns minus values.
    rewards = torch.tensor([[[1.0], [1.0], [1.0]]])
    values = torch.zeros(1, 3, 1)
    adv, ret = compute_agentwise_gae(
        rewards, values, torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(1), 0.9, 1.0
    )
    torch.testing.assert_close(ret[0, :, 0], torch.tensor([1 + 0.9 + 0.81, 1 + 0.9, 1.0]))


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, T, N = 4, 5, 3
    rewards = torch.randn(B, T, N, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, N, generator=g, dtype=torch.float64)
    dones = (torch.rand(B, T, generator=g) < 0.3).double()
    last = torch.randn(B, generator=g, dtype=torch.float64)
    adv, ret = compute_agentwise_gae(rewards, values, dones, last, 0.97, 0.9)
    ref_adv, ref_ret = reference_gae(rewards, values, dones, last, 0.97, 0.9)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
