"""Micro-batching bounds memory without changing the gradient; half-precision bases keep fp32 adapters."""

import pytest
import torch

from marft.learner.batching import PolicyBatch, micro_batches
from marft.models import SequenceBatch
from marft.trainer import Trainer
from tests.conftest import collect_scored, small_config


def test_micro_batches_respect_row_and_token_caps():
    seq = SequenceBatch(
        prompt_ids=torch.zeros(5, 6, dtype=torch.long),
        prompt_mask=torch.tensor(
            [[0, 0, 0, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1], [1] * 6]
        ),
        response_ids=torch.zeros(5, 2, dtype=torch.long),
        response_mask=torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1], [1, 1]]),
    )
    idx = torch.arange(5)
    assert [g.tolist() for g in micro_batches(idx, seq, max_rows=2)] == [[0, 1], [2, 3], [4]]
    # lengths (prompt + response): 5, 7, 3, 5, 8 -> sorted longest first: rows 4, 1, 0, 3, 2.
    # cap 12 padded tokens: [4] 8; [4,1] 2 * (6 + 2) = 16 > 12 -> split; [1] 7; [1,0] 2 * (6 + 2)
    # = 16 -> split; [0] 5; [0,3] 2 * (3 + 2) = 10; [0,3,2] 3 * (3 + 2) = 15 -> split; [2]
    groups = [g.tolist() for g in micro_batches(idx, seq, max_rows=10, max_tokens=12)]
    assert groups == [[4], [1], [0, 3], [2]]
    # rows of similar length together: 10 padded tokens computed for 10 real ones in [0, 3]
    assert [g.tolist() for g in micro_batches(idx, seq, max_rows=2, max_tokens=100)] == [[4, 1], [0, 3], [2]]


def grads_with(trainer, batch, **cfg_changes):
    for k, v in cfg_changes.items():
        setattr(trainer.parts.learner.policy.cfg, k, v)
    model = trainer.parts.model
    params = model.adapter_parameters("listener")
    for p in params:
        p.grad = None
    with model.adapter("listener"):
        terms = trainer.parts.learner.policy.minibatch_backward(
            batch, torch.arange(len(batch.sample_mask), device=batch.sample_mask.device)
        )
    return terms.policy_loss, [p.grad.clone() for p in params]


U32 = 2.0**-24
"""float32's unit roundoff."""


def absolute_terms(trainer, batch) -> list[torch.Tensor]:
    """Per element of each LoRA gradient, the sum of the absolute values of its per-sample terms
    (one sample per micro-batch; a leaf tensor's hook sees each backward's term before it is added)."""
    params = trainer.parts.model.adapter_parameters("listener")
    sums = [torch.zeros_like(p) for p in params]
    hooks = [p.register_hook(lambda g, s=s: s.add_(g.abs())) for p, s in zip(params, sums, strict=True)]
    try:
        grads_with(trainer, batch, micro_batch_size=1, micro_batch_tokens=0)
    finally:
        for h in hooks:
            h.remove()
    return sums


def chain_length(trainer, rows: int, positions: int) -> int:
    """How many float32 roundings can stand between a gradient element and the exact value: the
    weight-gradient sum over every token position of every row, plus, for each term, the inner
    products that made it (per layer the attention projections and o_proj over the hidden size,
    the MLP over its width, attention over the positions; the output layer over the hidden size
    and its backward over the vocabulary)."""
    tiny = trainer.cfg.model.tiny
    per_layer = 2 * tiny.hidden_size + tiny.intermediate_size + positions
    vocab = trainer.parts.model.policy.get_output_embeddings().weight.shape[0]
    return rows * positions + tiny.num_layers * per_layer + tiny.hidden_size + vocab


def float32_bound(terms: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """How far two float32 computations of the same gradient, in other orders and shapes, can
    differ: each is within ``n u sum|term|`` of the exact value (the classical bound for ``n``
    roundings, u = 2^-24), so together within twice that."""
    return [2 * n * U32 * t for t in terms]


def within(got: list[torch.Tensor], ref: list[torch.Tensor], bound: list[torch.Tensor]) -> bool:
    return all(bool(((g - r).abs() <= b).all()) for g, r, b in zip(got, ref, bound, strict=True))


@pytest.mark.parametrize("algo", ["appo", "tppo", "grpo", "tppo/seq-mean-token-sum"])
def test_gradient_is_independent_of_micro_batching(tmp_path, algo):
    """Micro-batched gradients equal the one-batch gradient within the float32 error of the sums
    involved: ``2 n u`` times the sum of the absolute per-sample terms (measured with one sample
    per micro-batch), ``n`` the roundings between an element and its exact value
    (:func:`chain_length`: 982 here). Measured on AVX-512 and AVX2 the largest difference was a
    third of the bound (AVX-512, appo, one sample per micro-batch); a 0.1% error in the gradient is
    far outside it (checked). ``name/mode``: with ``algorithm.loss_agg_mode=mode``."""
    algo, _, agg_mode = algo.partition("/")
    cfg = small_config(
        "env.n_envs=12",
        "algorithm.entropy_coef=0.01",
        f"algorithm.name={algo}",
        f"algorithm.loss_agg_mode={agg_mode or 'null'}",
        "algorithm.group_size=3",
        "algorithm.kl_coef=0.1",
        "sampling.max_new_tokens=4",
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    rollout, scores = collect_scored(trainer, 1)
    actions, old = rollout.agents[1], scores.old_logprobs[1]
    S, L = old.shape
    # advantages far from zero (per token for tppo) and a few padded (mask 0) samples
    adv = torch.linspace(-2, 2, S)
    if algo == "tppo":
        adv = adv[:, None] + torch.linspace(-1, 1, L)[None, :]
    mask = torch.ones(S)
    mask[[1, 7]] = 0.0
    device = old.device
    steps = PolicyBatch(actions, old, scores.ref_logprobs[1], adv.to(device), mask.to(device))
    # a non-trivial adapter, so that every LoRA matrix gets a gradient
    with torch.no_grad():
        for p in trainer.parts.model.adapter_parameters("listener"):
            p.add_(0.05 * torch.randn_like(p))
    ref_loss, ref = grads_with(trainer, steps, micro_batch_size=64, micro_batch_tokens=0)
    n = chain_length(trainer, S, actions.prompt_ids.shape[1] + actions.response_ids.shape[1])
    bound = float32_bound(absolute_terms(trainer, steps), n)
    for changes in [
        dict(micro_batch_size=1),
        dict(micro_batch_size=5),
        dict(micro_batch_size=64, micro_batch_tokens=40),
    ]:
        loss, got = grads_with(trainer, steps, **changes)
        torch.testing.assert_close(loss, ref_loss)
        worst = max(
            float(((g - r).abs() / b.clamp_min(1e-30)).max()) for g, r, b in zip(got, ref, bound, strict=True)
        )
        assert within(got, ref, bound), f"{changes}: a gradient element is {worst:.2f} bounds off"
    assert any(r.abs().sum() > 0 for r in ref)
    assert not within([1.001 * r for r in ref], ref, bound)  # the bound is tight enough to fail


def test_bfloat16_base_keeps_float32_trainables_and_trains(tmp_path):
    trainer = Trainer(small_config("model.dtype=bfloat16"), tmp_path / "run")
    trainer.setup()
    model = trainer.parts.model
    assert {p.dtype for _, p in model.base_parameters()} == {torch.bfloat16}
    for role in model.roles:
        assert {p.dtype for p in model.adapter_parameters(role)} == {torch.float32}
    assert trainer.parts.scorer.needs.old_logprobs  # auto: on for a half-precision base
    before = [p.detach().clone() for p in model.adapter_parameters("speaker")]
    result = trainer.parts.learner.update(*collect_scored(trainer, 1), 0)
    assert result.trained == ["speaker", "listener"]
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
    after = model.adapter_parameters("speaker")
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_remembered_bootstrap_features_equal_fresh_ones(tmp_path):
    """Step 0 reuses the bootstrap features of the previous trajectory instead of a second forward."""
    trainer = Trainer(small_config("team.agents.1.observes=[]"), tmp_path / "run")  # both agents at depth 0
    trainer.setup()
    first, first_scores = collect_scored(trainer, 1)
    cached = first_scores.next_features.clone()
    calls = []
    forward = trainer.parts.model.critic_features
    trainer.parts.model.critic_features = lambda *a: calls.append(a[0].shape[0]) or forward(*a)
    second, second_scores = collect_scored(trainer, 1)
    torch.testing.assert_close(second_scores.features[0], cached)
    # the speaker's rows were not scored again: one forward for the listener's rows, one for the
    # next bootstrap
    assert calls == [8, 8]
    # and they are what a fresh forward gives for those observations
    ids, mask = second.agents[0].prompt_ids, second.agents[0].prompt_mask
    torch.testing.assert_close(forward(ids, mask), cached, atol=1e-5, rtol=1e-5)
    assert first_scores.features[1].shape == second_scores.features[1].shape


@pytest.mark.parametrize("algo", ["appo", "tppo"])
def test_scoring_in_token_budgeted_micro_batches_equals_one_forward_per_turn(tmp_path, algo):
    """Critic features (per action and per token), reference log-probs and bootstrap features do
    not depend on the scoring forward's micro-batching."""
    cfg = small_config(f"algorithm.name={algo}", "algorithm.kl_coef=0.1", "sampling.max_new_tokens=4")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    traj, whole = collect_scored(trainer, 1)
    calls = []
    forward = trainer.parts.model.score_reference
    trainer.parts.model.score_reference = lambda batch, *a, **k: (
        calls.append(len(batch.prompt_ids)) or forward(batch, *a, **k)
    )
    trainer.parts.scorer.algorithm.micro_batch_tokens = 40  # a few rows per forward
    trainer.parts.scorer._next = None
    split = trainer.parts.scorer.score(traj)
    assert len(calls) > 2 * traj.shape[1] and max(calls) < traj.shape[0]  # really split
    for a, b, actions in zip(split.features, whole.features, traj.agents, strict=True):
        if algo == "tppo":  # per token: compare real tokens (padding positions are never used)
            real = actions.response_mask.bool()
            a, b = a[real], b[real]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(split.ref_logprobs, whole.ref_logprobs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.next_features, whole.next_features, atol=1e-5, rtol=1e-5)
