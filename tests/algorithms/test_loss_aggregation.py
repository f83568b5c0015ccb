"""The policy loss's aggregation modes (``algorithm.loss_agg_mode``) on hand-computed tensors, and
micro-batching that leaves a minibatch's loss and gradient as they are in every mode."""

import math

import pytest
import torch

from marft.algorithms import (
    LOSS_AGG_MODES,
    agg_loss,
    agg_units,
    explained_variance,
    loss_inputs,
    ppo_policy_loss,
)
from marft.algorithms.losses import vanilla_policy_loss

# Two sequences of three token slots, and a third with no real token (an agent that did not act).
# Ratios: row 0 token 0 is 1.5 (log 1.5 - 0), every other real token 1; the padded slot (row 1,
# token 2) has a huge ratio and advantage that must never count.
LOGPROBS = torch.tensor([[math.log(1.5), 0.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 0.0]])
OLD = torch.zeros(3, 3)
ADV = torch.tensor([[1.0, 2.0, 3.0], [-1.0, -1.0, 100.0], [5.0, 5.0, 5.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
# Per real token, max(-A r, -A clip(r, 0.8, 1.2)):
#   row 0: r=1.5, A=1 -> max(-1.5, -1.2) = -1.2; A=2 -> -2; A=3 -> -3   (sum -6.2)
#   row 1: A=-1, r=1 -> 1; 1                                            (sum  2.0)


def test_token_mean_is_the_mean_over_every_real_token():
    out = ppo_policy_loss(LOGPROBS, OLD, ADV, MASK, clip_eps=0.2, agg_mode="token-mean")
    # (-1.2 - 2 - 3 + 1 + 1) / 5 real tokens
    torch.testing.assert_close(out.loss, torch.tensor(-4.2 / 5))
    torch.testing.assert_close(out.clipfrac, torch.tensor(1 / 5))  # one ratio of five clipped
    # k3 per token: (r - 1) - log r = 0.5 - log 1.5 for the 1.5 ratio, 0 elsewhere
    torch.testing.assert_close(out.approx_kl, torch.tensor((0.5 - math.log(1.5)) / 5))


def test_seq_mean_token_sum_sums_each_sequence_and_averages_the_real_ones():
    out = ppo_policy_loss(LOGPROBS, OLD, ADV, MASK, clip_eps=0.2, agg_mode="seq-mean-token-sum")
    # (-6.2 + 2.0) / 2 sequences with a real token (the third has none: not -4.2 / 3)
    torch.testing.assert_close(out.loss, torch.tensor(-2.1))
    # the ratio statistics stay per token
    torch.testing.assert_close(out.clipfrac, torch.tensor(1 / 5))


def test_action_mean_is_the_mean_over_real_actions():
    # one ratio per action: 1.5 (A=1), 0.5 (A=-1), and a padded action
    logprobs = torch.tensor([math.log(1.5), math.log(0.5), 7.0])
    adv, mask = torch.tensor([1.0, -1.0, 50.0]), torch.tensor([1.0, 1.0, 0.0])
    out = ppo_policy_loss(logprobs, torch.zeros(3), adv, mask, clip_eps=0.2, agg_mode="action-mean")
    # max(-1.5, -1.2) = -1.2; max(0.5, 0.8) = 0.8 -> (-1.2 + 0.8) / 2
    torch.testing.assert_close(out.loss, torch.tensor(-0.2))
    torch.testing.assert_close(out.clipfrac, torch.tensor(1.0))
    # vanilla: mean(-A r) = (-1.5 + 0.5) / 2
    pg = vanilla_policy_loss(logprobs, torch.zeros(3), adv, mask, clip_eps=0.2, agg_mode="action-mean")
    torch.testing.assert_close(pg.loss, torch.tensor(-0.5))


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-sum, action-mean"):
        agg_loss(torch.zeros(2), torch.ones(2), "seq-mean-token-mean")


def test_loss_inputs_take_the_ratio_per_token_or_per_action():
    tok = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    response_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    sample_mask = torch.tensor([1.0, 0.0])
    words = torch.tensor([3.0, 1.0])
    adv = torch.tensor([2.0, -1.0])
    old_tokens = torch.full((2, 5), -0.25)  # wider than the micro-batch's trimmed responses
    per_token = loss_inputs("token-mean", tok, old_tokens, adv, response_mask, sample_mask, words, "sum")
    assert per_token.logprobs is tok
    torch.testing.assert_close(per_token.old_logprobs, torch.full((2, 3), -0.25))
    torch.testing.assert_close(per_token.advantages, torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]]))
    torch.testing.assert_close(per_token.mask, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    # per-token advantages are cut to the micro-batch's length
    adv_tokens = torch.arange(10.0).reshape(2, 5)
    cut = loss_inputs(
        "seq-mean-token-sum", tok, old_tokens, adv_tokens, response_mask, sample_mask, words, "sum"
    )
    torch.testing.assert_close(cut.advantages, adv_tokens[:, :3])
    # per action: summed (-3, -0.5) or divided by the word count (-1, -0.5)
    old_actions = torch.tensor([-2.0, -1.0])
    summed = loss_inputs("action-mean", tok, old_actions, adv, response_mask, sample_mask, words, "sum")
    torch.testing.assert_close(summed.logprobs, torch.tensor([-3.0, -0.5]))
    assert summed.old_logprobs is old_actions and summed.advantages is adv and summed.mask is sample_mask
    by_word = loss_inputs(
        "action-mean", tok, old_actions, adv, response_mask, sample_mask, words, "word_mean"
    )
    torch.testing.assert_close(by_word.logprobs, torch.tensor([-1.0, -0.5]))


def test_agg_units_count_what_each_mode_averages_over():
    response_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
    sample_mask = torch.tensor([1.0, 1.0, 1.0, 0.0])  # row 2 acted without a token, row 3 did not act
    torch.testing.assert_close(
        agg_units("token-mean", response_mask, sample_mask), torch.tensor([2.0, 1, 0, 0])
    )
    torch.testing.assert_close(agg_units("action-mean", response_mask, sample_mask), sample_mask)
    torch.testing.assert_close(
        agg_units("seq-mean-token-sum", response_mask, sample_mask), torch.tensor([1.0, 1, 0, 0])
    )


def _random_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    S, L = 7, 5
    lengths = torch.tensor([5, 1, 3, 4, 2, 5, 3])
    response_mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    sample_mask = torch.tensor([1.0, 1, 0, 1, 1, 1, 1])
    old = -torch.rand(S, L, generator=g) * response_mask
    logprobs = (old + 0.3 * torch.randn(S, L, generator=g)) * response_mask
    adv = torch.randn(S, L, generator=g)
    return logprobs, old, adv, response_mask, sample_mask


def test_seq_mean_token_sum_equals_a_loop_over_sequences():
    logprobs, old, adv, response_mask, sample_mask = _random_batch(0)
    words = torch.ones(7)
    inp = loss_inputs("seq-mean-token-sum", logprobs, old, adv, response_mask, sample_mask, words, "sum")
    got = ppo_policy_loss(inp.logprobs, inp.old_logprobs, inp.advantages, inp.mask, 0.2, "seq-mean-token-sum")
    per_seq = []
    for s in range(7):
        if not sample_mask[s]:
            continue
        total = 0.0
        for t in range(int(response_mask[s].sum())):
            r = math.exp(float(logprobs[s, t] - old[s, t]))
            a = float(adv[s, t])
            total += max(-a * r, -a * min(max(r, 0.8), 1.2))
        per_seq.append(total)
    torch.testing.assert_close(got.loss, torch.tensor(sum(per_seq) / len(per_seq)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batches_weighted_by_their_units_give_the_minibatch_loss_and_gradient(mode):
    """The learner's accumulation (marft.learner.policy): each micro-batch's aggregated loss times
    its share of the minibatch's units sums to the minibatch's loss, and so does the gradient."""
    logprobs, old, adv, response_mask, sample_mask = _random_batch(1)
    words = torch.tensor([2.0, 1, 1, 3, 1, 2, 2])
    if mode == "action-mean":
        adv = adv[:, 0]
        old_ratio = (old * response_mask).sum(-1)  # each action's old log-prob (norm "sum")
    else:
        old_ratio = old

    def loss_of(rows: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
        inp = loss_inputs(
            mode,
            lp[rows],
            old_ratio[rows],
            adv[rows],
            response_mask[rows],
            sample_mask[rows],
            words[rows],
            "sum",
        )
        return ppo_policy_loss(inp.logprobs, inp.old_logprobs, inp.advantages, inp.mask, 0.2, mode).loss

    whole_lp = logprobs.clone().requires_grad_(True)
    whole = loss_of(torch.arange(7), whole_lp)
    whole.backward()
    total = agg_units(mode, response_mask, sample_mask).sum()
    split_lp = logprobs.clone().requires_grad_(True)
    summed = torch.zeros(())
    for rows in (torch.tensor([0, 1]), torch.tensor([3, 4, 5]), torch.tensor([6])):  # row 2: no sample
        weight = agg_units(mode, response_mask[rows], sample_mask[rows]).sum()
        part = loss_of(rows, split_lp) * (weight / total)
        part.backward()
        summed = summed + part.detach()
    torch.testing.assert_close(summed, whole.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split_lp.grad, whole_lp.grad, rtol=1e-5, atol=1e-6)
    assert whole_lp.grad.abs().sum() > 0


def test_explained_variance_hand_values():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # var(returns) = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25; residuals (0, 0, 0, 1): var = 0.1875
    assert explained_variance(torch.tensor([1.0, 2.0, 3.0, 3.0]), returns) == pytest.approx(1 - 0.1875 / 1.25)
    assert explained_variance(returns.clone(), returns) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)  # the mean
    assert math.isnan(explained_variance(torch.zeros(3), torch.ones(3)))  # returns do not vary
    # returns 0 up to float32 rounding (a demo iteration without reward) vary only by noise
    noise = torch.tensor([0.0, 0.0, -7.450580596923828e-09, 0.0])
    assert math.isnan(explained_variance(torch.tensor([0.3, -0.2, 0.1, 0.25]), noise))
    assert math.isnan(explained_variance(torch.zeros(0), torch.zeros(0)))
