import pytest
import torch

from marft.algorithms import compute_agentwise_gae, compute_tokenwise_gae


def reference_tokenwise(rewards, values, mask, dones, last_values, gamma, lam, tg, tl):
    """The spec as a plain loop over every token micro-step (slow, obviously right)."""
    B, T, N, L = values.shape
    adv = torch.zeros(B, T, N, L, dtype=torch.float64)
    for b in range(B):
        next_adv, next_value = 0.0, float(last_values[b])
        for t in reversed(range(T)):
            for i in reversed(range(N)):
                n = int(mask[b, t, i].sum())
                for k in reversed(range(n)):
                    v = float(values[b, t, i, k])
                    if k == n - 1:
                        nt = 1.0 if i < N - 1 else 1.0 - float(dones[b, t])
                        delta = float(rewards[b, t, i]) + gamma * nt * next_value - v
                        a = delta + gamma * lam * nt * next_adv
                    else:
                        delta = tg * next_value - v
                        a = delta + tg * tl * next_adv
                    adv[b, t, i, k] = a
                    next_adv, next_value = a, v
    return adv, (adv + values) * mask


def random_case(seed, B=3, T=3, N=2, L=5):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, N, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, N, L, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, L + 1, (B, T, N), generator=g)
    mask = (torch.arange(L) < lengths[..., None]).double()
    dones = (torch.rand(B, T, generator=g) < 0.4).double()
    last = torch.randn(B, generator=g, dtype=torch.float64)
    return rewards, values, mask, dones, last


def test_hand_worked_values():
    # B=1, T=1, N=2; agent 0 has 2 tokens, agent 1 has 1 token (+1 padding); done after the step.
    rewards = torch.tensor([[[0.0, 1.0]]])
    values = torch.tensor([[[[0.1, 0.2], [0.5, 9.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    adv, ret = compute_tokenwise_gae(
        rewards,
        values,
        mask,
        torch.ones(1, 1),
        torch.tensor([7.0]),
        gamma=0.9,
        lam=0.5,
        token_gamma=1.0,
        token_lam=0.8,
    )
    # agent 1, token 0 (last, done): delta = 1 - 0.5 = 0.5; adv = 0.5
    # agent 0, token 1 (last, not cut): delta = 0 + 0.9 * 0.5 - 0.2 = 0.25; adv = 0.25 + 0.9*0.5*0.5 = 0.475
    # agent 0, token 0 (inner):         delta = 1.0 * 0.2 - 0.1 = 0.1;     adv = 0.1 + 1.0*0.8*0.475 = 0.48
    torch.testing.assert_close(adv, torch.tensor([[[[0.48, 0.475], [0.5, 0.0]]]]))
    torch.testing.assert_close(ret, torch.tensor([[[[0.58, 0.675], [1.0, 0.0]]]]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tg, tl", [(1.0, 1.0), (0.97, 0.9), (0.5, 0.0)])
def test_vectorised_equals_loop(seed, tg, tl):
    rewards, values, mask, dones, last = random_case(seed)
    adv, ret = compute_tokenwise_gae(rewards, values, mask, dones, last, 0.95, 0.9, tg, tl)
    ref_adv, ref_ret = reference_tokenwise(rewards, values, mask, dones, last, 0.95, 0.9, tg, tl)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)


@pytest.mark.parametrize("seed", range(4))
def test_one_token_actions_equal_action_level_gae(seed):
    rewards, values, _, dones, last = random_case(seed, L=1)
    mask = torch.ones_like(values)
    adv, ret = compute_tokenwise_gae(rewards, values, mask, dones, last, 0.9, 0.8)
    a_adv, a_ret = compute_agentwise_gae(rewards, values[..., 0], dones, last, 0.9, 0.8)
    torch.testing.assert_close(adv[..., 0], a_adv)
    torch.testing.assert_close(ret[..., 0], a_ret)


def test_reference_recursion_with_token_gamma_equal_gamma():
    # With token_gamma = gamma and token_lam = lam, one action of L tokens is plain GAE over tokens.
    L, gamma, lam = 4, 0.9, 0.7
    values = torch.tensor([[[[0.3, -0.2, 0.5, 0.1]]]], dtype=torch.float64)
    rewards = torch.tensor([[[2.0]]], dtype=torch.float64)
    adv, _ = compute_tokenwise_gae(
        rewards, values, torch.ones(1, 1, 1, L), torch.ones(1, 1), torch.zeros(1), gamma, lam, gamma, lam
    )
    r = [0.0, 0.0, 0.0, 2.0]
    v = values.flatten().tolist() + [0.0]
    expected, running = [], 0.0
    for k in reversed(range(L)):
        running = r[k] + gamma * v[k + 1] * (k < L - 1) - v[k] + gamma * lam * running
        expected.insert(0, running)
    torch.testing.assert_close(adv.flatten(), torch.tensor(expected, dtype=torch.float64))
