import math

import torch

from marft.algorithms import masked_mean, masked_normalize, ppo_policy_loss, regression_loss, value_loss


def test_ppo_loss_hand_values():
    # ratios 1 and 1.5 with advantage +1; 0.5 with advantage -1; eps = 0.2
    logprobs = torch.tensor([0.0, math.log(1.5), math.log(0.5)])
    old = torch.zeros(3)
    adv = torch.tensor([1.0, 1.0, -1.0])
    out = ppo_policy_loss(logprobs, old, adv, torch.ones(3), clip_eps=0.2)
    # per entry max(-A r, -A clip(r)): -1; max(-1.5, -1.2) = -1.2; max(0.5, 0.8) = 0.8
    torch.testing.assert_close(out.loss, torch.tensor((-1.0 - 1.2 + 0.8) / 3))
    # k3: (r - 1) - log r = 0; 0.5 - log 1.5; -0.5 - log 0.5
    kl = (0.0 + (0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 3
    torch.testing.assert_close(out.approx_kl, torch.tensor(kl))
    torch.testing.assert_close(out.clipfrac, torch.tensor(2 / 3))


def test_ppo_loss_ignores_padding_and_has_gradient():
    logprobs = torch.tensor([0.0, 5.0], requires_grad=True)
    out = ppo_policy_loss(logprobs, torch.zeros(2), torch.tensor([2.0, 100.0]), torch.tensor([1.0, 0.0]), 0.2)
    torch.testing.assert_close(out.loss, torch.tensor(-2.0))
    out.loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([-2.0, 0.0]))


def test_value_loss_clipped_hand_values():
    v, old, ret, m = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0]), torch.ones(1)
    # mse: unclipped 0.5 * 1^2 = 0.5; clipped v = 0.2 -> 0.5 * 1.8^2 = 1.62 -> max = 1.62
    torch.testing.assert_close(value_loss(v, old, ret, m, 0.2, "mse"), torch.tensor(1.62))
    # huber(delta=1): unclipped 0.5; clipped |e| = 1.8 -> 1.8 - 0.5 = 1.3
    torch.testing.assert_close(value_loss(v, old, ret, m, 0.2, "huber", 1.0), torch.tensor(1.3))
    # no clipping
    torch.testing.assert_close(value_loss(v, old, ret, m, None, "mse"), torch.tensor(0.5))


def test_huber_is_symmetric():
    e = torch.tensor([-3.0, -0.5, 0.5, 3.0])
    loss = regression_loss(e, torch.zeros(4), "huber", huber_delta=1.0)
    torch.testing.assert_close(loss, torch.tensor([2.5, 0.125, 0.125, 2.5]))


def test_masked_normalize_ignores_padding():
    x = torch.tensor([1.0, 2.0, 3.0, 1000.0])
    m = torch.tensor([1.0, 1.0, 1.0, 0.0])
    out = masked_normalize(x, m)
    # mean 2, unbiased std 1 over the three real entries
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_mean(x, m), torch.tensor(2.0))
