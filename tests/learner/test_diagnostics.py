"""Per-agent learning diagnostics of the metrics row: each agent's advantages as the policy trains
on them (``adv_mean``, ``adv_std``, ``adv_zero_share``), the share of its actions cut at the length
limit (``cut_share``), and each adapter's gradient norm before clipping (``grad_norm``) and how far
its update moved it (``update_norm``)."""

import json
import math

import pytest
import torch

from marft.learner.batching import PolicyBatch
from marft.learner.stats import (
    AdapterStats,
    AdvantageStats,
    AgentAdvantages,
    AgentStats,
    PolicyStats,
    cut_share,
)
from marft.reporting.report import DIAGNOSTICS, write_report
from marft.trainer import Trainer
from tests.conftest import collect_scored, small_config


def test_advantage_stats_per_action_are_over_real_samples_only():
    # real samples: 1, -1, 1e-9 (zero: below 1e-8), 3; the padded 5 must not count.
    # mean 0.75; population variance (0.25² + 1.75² + 0.75² + 2.25²) / 4 = 8.75 / 4 = 2.1875
    adv = torch.tensor([1.0, -1.0, 1e-9, 3.0, 5.0])
    sample_mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    stats = AgentAdvantages.of(adv, sample_mask, torch.ones(5, 2))
    assert stats.mean == pytest.approx(0.75)
    assert stats.std == pytest.approx(math.sqrt(2.1875))
    assert stats.zero_share == 0.25
    assert AgentAdvantages.of(adv, torch.zeros(5), torch.ones(5, 2)) is None  # no real sample
    one = AgentAdvantages.of(torch.tensor([2.0]), torch.ones(1), torch.ones(1, 1))
    assert (one.mean, one.std, one.zero_share) == (2.0, 0.0, 0.0)  # population std: 0, not NaN


def test_per_token_advantages_count_as_their_mean_over_real_tokens():
    # [S=4, L'=4] advantages (the longest agent's width) for an agent of L=3 tokens; per-sample
    # means over real tokens: (2 + 4) / 2 = 3, 0, (1 + 2 + 3) / 3 = 2; row 3 is padding.
    adv = torch.tensor(
        [[2.0, 4.0, 9.0, 9.0], [0.0, 7.0, 7.0, 7.0], [1.0, 2.0, 3.0, 9.0], [5.0, 5.0, 5.0, 5.0]]
    )
    response_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]])
    stats = AgentAdvantages.of(adv, torch.tensor([1.0, 1.0, 1.0, 0.0]), response_mask)
    # mean 5/3; population variance ((4/3)² + (5/3)² + (1/3)²) / 3 = 14/9
    assert stats.mean == pytest.approx(5 / 3)
    assert stats.std == pytest.approx(math.sqrt(14) / 3)
    assert stats.zero_share == pytest.approx(1 / 3)
    row = AdvantageStats(agents={"a": stats}).metrics()
    assert row == {"adv_mean/a": stats.mean, "adv_std/a": stats.std, "adv_zero_share/a": stats.zero_share}


def test_cut_share_counts_real_actions_that_end_without_an_end_of_turn_token():
    eos = [2, 5]
    response_ids = torch.tensor([[7, 8, 9], [7, 2, 0], [5, 0, 0], [7, 8, 9], [7, 8, 0]])
    response_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    # row 0: no end-of-turn token (cut); rows 1 and 2 end with one (2, 5); row 3 is cut but not a
    # real action; row 4 ends without one before the longest row's length (a shorter limit): cut
    sample_mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    assert cut_share(response_ids, response_mask, sample_mask, eos) == 0.5
    assert cut_share(response_ids, response_mask, torch.tensor([0.0, 1, 1, 0, 0]), eos) == 0.0
    assert math.isnan(cut_share(response_ids, response_mask, torch.zeros(5), eos))


def test_policy_stats_columns_of_the_diagnostics():
    stats = PolicyStats(
        agents={"a": AgentStats(0.5, 3.0, cut_share=0.25), "b": AgentStats(0.5, 3.0)},
        adapters={"a": AdapterStats(grad_norm=1.5, update_norm=0.01), "b": AdapterStats(False)},
    )
    m = stats.metrics()
    assert m["cut_share/a"] == 0.25 and "cut_share/b" not in m  # NaN: no real action, no column
    assert m["grad_norm/a"] == 1.5 and m["update_norm/a"] == 0.01
    assert "grad_norm/b" not in m and "update_norm/b" not in m  # not trained: a zero loss and KL only
    assert math.isnan(AdapterStats().grad_norm) and AdapterStats().update_norm == 0.0


def _batch(traj, scores, targets, n: int) -> PolicyBatch:
    ref = scores.ref_logprobs[n] if scores.ref_logprobs is not None else None
    own = targets.agents[n]
    return PolicyBatch(traj.agents[n], scores.old_logprobs[n], ref, own.advantages, own.sample_mask)


@pytest.mark.parametrize("case", ["appo", "tppo", "grpo", "appo/mixed"])
def test_the_demo_logs_every_diagnostic_for_both_roles(tmp_path, case):
    """One optimizer step per adapter (one epoch, one minibatch): its ``grad_norm`` is the norm of
    the whole batch's gradient at the adapter before the update, and ``update_norm`` how far the
    adapter moved; both update paths (``algorithm.policy_step``)."""
    algo, _, step = case.partition("/")
    cfg = small_config(
        f"algorithm.name={algo}",
        "algorithm.group_size=4",
        "algorithm.num_minibatches=1",
        f"algorithm.policy_step={step or 'per_adapter'}",
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    traj, scores = collect_scored(trainer, 1)
    learner, model = trainer.parts.learner, trainer.parts.model
    roles = ["speaker", "listener"]
    targets = learner.targets(traj, scores)
    expected_norm = {}
    for n, role in enumerate(roles):
        params = model.adapter_parameters(role)
        for p in params:
            p.grad = None
        model.policy.train()
        with model.adapter(role):
            batch = _batch(traj, scores, targets, n)
            learner.policy.minibatch_backward(batch, torch.arange(len(batch.sample_mask)))
        expected_norm[role] = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        for p in params:
            p.grad = None
    before = {r: [p.detach().clone() for p in model.adapter_parameters(r)] for r in roles}
    m = learner.update(traj, scores, 0).metrics
    eos = torch.tensor(model.eos_ids)
    for n, role in enumerate(roles):
        for key in ("adv_mean", "adv_std", "adv_zero_share", "cut_share", "grad_norm", "update_norm"):
            assert math.isfinite(m[f"{key}/{role}"]), (key, role)
        assert 0.0 <= m[f"adv_zero_share/{role}"] <= 1.0 and 0.0 <= m[f"cut_share/{role}"] <= 1.0
        after = model.adapter_parameters(role)
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(after, before[role], strict=True)])
        assert m[f"update_norm/{role}"] == pytest.approx(float(moved.norm()), rel=1e-5)
        assert m[f"update_norm/{role}"] > 0
        assert m[f"grad_norm/{role}"] == pytest.approx(expected_norm[role], rel=1e-4)
        # what the policy trains on: the targets' advantages over the agent's real samples
        actions, own = traj.agents[n], targets.agents[n]
        trained_on = AgentAdvantages.of(own.advantages, own.sample_mask, actions.response_mask)
        assert m[f"adv_mean/{role}"] == pytest.approx(trained_on.mean)
        assert m[f"adv_std/{role}"] == pytest.approx(trained_on.std)
        # the demo's actions are at most 2 tokens (sampling.max_new_tokens): those without an
        # end-of-turn token among their real tokens are cut
        ended = torch.isin(actions.response_ids, eos.to(actions.response_ids.device))
        ended = (ended & actions.response_mask.bool()).any(-1)
        real = own.sample_mask > 0
        assert m[f"cut_share/{role}"] == pytest.approx(float((~ended)[real].float().mean()))
    if algo == "grpo":  # group-relative: each group's advantages sum to zero
        assert abs(m["adv_mean/listener"]) < 1e-5


def test_the_report_plots_each_diagnostic_per_role_where_logged(tmp_path):
    rows = [
        {"iteration": i, "episode_return": 0.5}
        | {f"{key}/{role}": 1.0 + i for key in DIAGNOSTICS for role in ("speaker", "listener")}
        for i in range(3)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report([tmp_path]).read_text()
    for key, title in DIAGNOSTICS.items():
        assert f'id="plot-{key}"><svg' in page and title in page, key
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "episode_return": 0.5}) + "\n")
    page = write_report([tmp_path]).read_text()
    assert not any(f'id="plot-{key}"' in page for key in DIAGNOSTICS)  # a run that did not log them
