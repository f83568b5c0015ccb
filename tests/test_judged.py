"""Judged (open-ended) work end to end on the tiny model: the presets train, the judge's metrics
reach the metrics rows, a run resumes exactly (the judge's cache travels in the checkpoint),
``marft eval`` reports judge scores, the win rate against the untrained team and the per-agent
ablation; the reward-hacking guard and the length-controlled gain by hand."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from marft.compose import load_config
from marft.eval.evaluate import evaluate, format_table
from marft.eval.judged import length_controlled_gain
from marft.reporting.guard import guard_metrics, hacking_gap, window_change
from marft.reporting.metrics import read_metrics, reproducible
from marft.trainer.checkpoint import load_trainer_files
from marft.trainer.trainer import Trainer
from tests.fixtures.judge_hacking import TINY, hacking_config


def tiny(preset, *overrides):
    agents = len(load_config(preset, ["model.name=tiny"]).team.agents)
    small = [f"team.agents.{i}.max_new_tokens=12" for i in range(agents)]
    return load_config(preset, TINY + small + list(overrides))


def train(cfg, out, resume=False):
    trainer = Trainer(cfg, out, resume=resume)
    trainer.setup()
    return trainer.train()


def adapters(ckpt, roles):
    return {r: load_file(str(ckpt / "adapters" / r / "adapter_model.safetensors")) for r in roles}


def test_the_slides_team_trains_against_the_judge_and_resumes_exactly(tmp_path):
    cfg = tiny("slides_team", "run.iterations=4", "run.checkpoint_every=2")
    whole = train(cfg, tmp_path / "whole")
    rows = whole.rows
    for key in (
        "judge_score",
        "heldout_score",
        "rules_pass",
        "response_words",
        "judge_repeated",
        "reward_hacking",
    ):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert all(0.0 <= r["judge_score"] <= 1.0 for r in rows)
    assert sum(r["judge_calls"] + r["judge_cache_hits"] for r in rows) == 4 * cfg.env.n_envs
    assert all(r["time_judge_s"] > 0 for r in rows if r["judge_calls"])
    roles = ["outliner", "writer"]
    start = adapters(tmp_path / "whole" / "checkpoints" / "iter-000002", roles)
    end = adapters(whole.checkpoint, roles)
    for role in roles:  # both agents learned from the judged reward
        assert any(not torch.equal(start[role][k], end[role][k]) for k in end[role]), role
    transcript = json.loads((tmp_path / "whole" / "transcripts.jsonl").read_text().splitlines()[-1])
    info = transcript["turns"][-1]["info"]
    assert info["judged_role"] == "writer" and set(info["rules"]) == {
        "max_words",
        "slides",
        "titles",
        "bullets",
        "bullet_words",
    }

    # the judges' caches travel in the checkpoint, in the first env copy's state only
    _, state, _ = load_trainer_files(tmp_path / "whole" / "checkpoints" / "iter-000002")
    envs = state["collector"]["envs"]
    assert [len(j["cache"]) for j in envs[0]["judges"]] == [
        rows[0]["judge_calls"] + rows[1]["judge_calls"]
    ] * 2
    assert not any("judges" in e for e in envs[1:])

    train(tiny("slides_team", "run.iterations=2", "run.checkpoint_every=2"), tmp_path / "split")
    rest = train(cfg, tmp_path / "split", resume=True)
    again = adapters(rest.checkpoint, roles)
    assert all(torch.equal(end[r][k], again[r][k]) for r in roles for k in end[r])
    assert [reproducible(r) for r in read_metrics(tmp_path / "whole")] == [
        reproducible(r) for r in read_metrics(tmp_path / "split")
    ]


def test_the_research_team_preset_runs(tmp_path):
    result = train(tiny("research_team", "run.iterations=1"), tmp_path / "run")
    assert result.rows[0]["episodes"] == 8 and math.isfinite(result.rows[0]["judge_score"])


def test_marft_eval_on_judged_work(tmp_path):
    cfg = tiny("slides_team", "run.iterations=2", "algorithm.policy_lr=0.01")
    run = train(cfg, tmp_path / "run")
    held = tiny("slides_team", "env.kwargs.split=heldout")
    summary = evaluate(held, tmp_path / "eval", checkpoint=run.checkpoint, samples=2, limit=4, progress=False)
    team, base = summary["team"], summary["untrained"]
    for metrics in (team, base):
        assert {"judge_score", "heldout_score", "rules_pass", "response_words", "accuracy"} <= set(metrics)
    vs = summary["vs_untrained"]
    assert 0.0 <= vs["win_rate"] <= 1.0 and 0.0 <= vs["wins"] <= 1.0
    assert vs["raw_gain"] == pytest.approx(team["judge_score"] - base["judge_score"], abs=1e-9)
    for role in ("outliner", "writer"):
        drop = summary["ablation"][role]["judge_score_drop"]
        assert drop == pytest.approx(team["judge_score"] - summary["ablation"][role]["judge_score"])
    table = format_table(summary)
    assert "untrained team" in table and "win rate" in table
    lines = (tmp_path / "eval" / "transcripts.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 2 * 4  # trained, untrained and two ablations, 4 tasks x 2 samples each
    assert summary["env_metrics"]["judge_calls"] > 0


def test_length_controlled_gain_by_hand():
    # score = 0.1 + 0.2 * log(1 + words) + 0.05 * trained exactly: the fit recovers 0.05 and 0.2,
    # while the raw gain also counts the trained team's longer responses
    words = [10, 20, 40, 30, 60, 120]
    trained = [False, False, False, True, True, True]
    scores = [0.1 + 0.2 * math.log1p(w) + 0.05 * t for w, t in zip(words, trained, strict=True)]
    out = length_controlled_gain(scores, words, trained)
    assert out["length_controlled_gain"] == pytest.approx(0.05)
    assert out["length_slope"] == pytest.approx(0.2)
    raw = sum(scores[3:]) / 3 - sum(scores[:3]) / 3
    assert out["raw_gain"] == pytest.approx(raw) and raw > 0.15


class Guard:
    window, min_gain, heldout_share = 2, 0.05, 0.25


def test_the_guard_flags_a_rise_the_heldout_judge_does_not_share():
    rising = [{"judge_score": s, "heldout_score": 0.4} for s in (0.3, 0.3, 0.4, 0.5, 0.5)]
    # gain (0.5 + 0.5) / 2 - 0.3 = 0.2 >= 0.05; held-out gain 0 < 0.25 * 0.2
    assert hacking_gap(rising, 2, 0.05, 0.25) == pytest.approx((0.2, 0.0))
    shared = [{"judge_score": s, "heldout_score": s - 0.1} for s in (0.3, 0.3, 0.4, 0.5, 0.5)]
    assert hacking_gap(shared, 2, 0.05, 0.25) is None  # the held-out judge rose as much
    assert hacking_gap(rising[:3], 2, 0.05, 0.25) is None  # too few rows for two windows
    flat = [{"judge_score": 0.3, "heldout_score": 0.4}] * 5
    assert hacking_gap(flat, 2, 0.05, 0.25) is None
    assert guard_metrics(rising[:4], rising[4], Guard) == {"reward_hacking": 1.0}
    assert guard_metrics([], {"judge_score": 0.3}, Guard) == {}  # no held-out judge: no check


def test_the_guards_warning_names_the_judged_length(caplog):
    """The training judge rises, the held-out judge falls and the responses grow: the warning says
    all three."""
    rows = [
        {"iteration": i, "judge_score": s, "heldout_score": h, "response_words": w}
        for i, (s, h, w) in enumerate(
            [(0.3, 0.5, 40), (0.3, 0.5, 40), (0.4, 0.45, 60), (0.5, 0.4, 80), (0.5, 0.4, 90)]
        )
    ]
    assert window_change(rows, "response_words", 2) == pytest.approx(45.0)  # (80 + 90) / 2 - 40
    with caplog.at_level("WARNING", logger="marft"):
        assert guard_metrics(rows[:4], rows[4], Guard) == {"reward_hacking": 1.0}
    assert "rose by 0.200" in caplog.text and "held-out judge's by -0.100" in caplog.text
    assert "the mean judged length by +45.0 words" in caplog.text


def test_the_team_learns_to_please_the_judge_and_the_guard_sees_it(tmp_path):
    # The tiny team learns whatever raises the tiny judge's score (words the judge likes; the
    # redundancy penalty takes away only the repeated ones); the held-out judge (another prompt)
    # does not follow, and the guard flags the run.
    cfg = hacking_config(tmp_path)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    frozen = {n: p.detach().clone() for n, p in trainer.parts.model.base_parameters()}
    rows = trainer.train().rows
    first = sum(r["judge_score"] for r in rows[:3]) / 3
    last = sum(r["judge_score"] for r in rows[-3:]) / 3
    assert last > first + 0.1, (first, last)  # learning happened
    held_first = sum(r["heldout_score"] for r in rows[:3]) / 3
    held_last = sum(r["heldout_score"] for r in rows[-3:]) / 3
    assert held_last - held_first < 0.25 * (last - first)
    assert rows[-1]["reward_hacking"] == 1.0 and rows[0]["reward_hacking"] == 0.0
    assert all(
        torch.equal(p, frozen[n]) for n, p in trainer.parts.model.base_parameters()
    )  # the judge's weights
