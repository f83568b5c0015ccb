import math

import pytest
import torch

from marft.algorithms import (
    ADVANTAGE_ESTIMATORS,
    dr_grpo_advantages,
    grpo_advantages,
    kl_estimate,
    reinforce_pp_advantages,
    rloo_advantages,
)

# two groups of G = 3: returns (1, 0, 0) and (1, 1, 1)
R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])


def test_grpo_hand_values():
    # group 1: mean 1/3, unbiased std = sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    s = math.sqrt(1 / 3)
    expected = torch.tensor([(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 0.0, 0.0, 0.0])
    torch.testing.assert_close(grpo_advantages(R, 3), expected, atol=1e-5, rtol=1e-5)


def test_dr_grpo_and_rloo_hand_values():
    torch.testing.assert_close(dr_grpo_advantages(R, 3), torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]))
    # leave-one-out: 1 - (0+0)/2 = 1; 0 - (1+0)/2 = -0.5
    torch.testing.assert_close(rloo_advantages(R, 3), torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(R, 1)


def test_reinforce_pp_normalises_over_the_batch():
    # mean 4/6, unbiased std over all six
    mean, std = R.mean(), R.std()
    torch.testing.assert_close(reinforce_pp_advantages(R, 3), (R - mean) / (std + 1e-6))


def test_per_agent_returns_are_grouped_per_column():
    per_agent = torch.stack([R, 2 * R], dim=1)  # [B, N]
    out = dr_grpo_advantages(per_agent, 3)
    torch.testing.assert_close(out[:, 1], 2 * out[:, 0])
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(torch.zeros(5), 3)


def test_registry_lists_every_estimator_with_what_it_needs():
    names = ["dr_grpo", "gae", "grpo", "reinforce_pp", "rloo", "token_gae"]
    assert ADVANTAGE_ESTIMATORS.names() == names
    with pytest.raises(KeyError, match="choose one of: " + ", ".join(names)):
        ADVANTAGE_ESTIMATORS.get("ppo")
    needs = {n: (ADVANTAGE_ESTIMATORS.get(n).values, ADVANTAGE_ESTIMATORS.get(n).grouped) for n in names}
    assert needs["gae"] == ("action", False) and needs["token_gae"] == ("token", False)
    assert all(needs[n] == ("none", True) for n in ("grpo", "dr_grpo", "rloo", "reinforce_pp"))


def test_kl_estimators_hand_values():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    lr = logp - ref  # log 2, log 0.5
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), lr)
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), 0.5 * lr**2)
    # k3 = ref/p - 1 - log(ref/p): 0.5 - 1 + log 2 ; 2 - 1 - log 2
    torch.testing.assert_close(
        kl_estimate(logp, ref, "k3"), torch.tensor([math.log(2) - 0.5, 1 - math.log(2)])
    )
    assert torch.all(kl_estimate(logp, ref, "k3") >= 0)
    torch.testing.assert_close(kl_estimate(ref, ref, "k3"), torch.zeros(2))


def test_k1_and_k3_are_unbiased_for_the_true_kl():
    # Sampling from p, E[k1] = E[k3] = KL(p || q).
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    true_kl = float((p * (p / q).log()).sum())
    idx = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, logq = p.log()[idx], q.log()[idx]
    assert float(kl_estimate(logp, logq, "k1").mean()) == pytest.approx(true_kl, abs=0.01)
    assert float(kl_estimate(logp, logq, "k3").mean()) == pytest.approx(true_kl, abs=0.01)
