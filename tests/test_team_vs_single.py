"""benchmarks/team_vs_single.py end to end on the tiny model: six rows, matched token budgets,
paired tests, and a second call that reuses every finished run and evaluation."""

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import write_tiny_config

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("team_vs_single", ROOT / "benchmarks" / "team_vs_single.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_team(tmp_path) -> Path:
    return write_tiny_config(
        tmp_path / "team.yaml",
        [
            {"role": "planner", "system_prompt": "plan the solution", "max_new_tokens": 3},
            {"role": "solver", "system_prompt": "give the answer", "graded": True},
        ],
        {
            "name": "math",
            "n_envs": 4,
            "horizon": 1,
            "kwargs": {"data": "arithmetic", "arith_count": 50, "arith_seed": 0},
        },
        sampling={"max_new_tokens": 5},
        algorithm={"name": "grpo", "group_size": 2, "ppo_epochs": 1},
    )


def test_the_six_rows_end_to_end_on_the_tiny_model(tmp_path):
    script = load_script()
    out = tmp_path / "out"
    argv = [str(tiny_team(tmp_path)), "--single-prompt", "answer", "--team-iterations", "2"]
    argv += ["--limit", "4", "--out", str(out), "--variant", "frozen planner: team.agents.0.trainable=false"]
    summary = script.main(argv)
    rows = summary["rows"]
    assert list(rows) == [1, 2, 3, 4, 5, 6, 7]
    assert rows[7]["row"] == "team, RL, adapter per role, frozen planner"
    for r in rows.values():
        assert 0.0 <= r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] <= 1.0 and len(r["per_seed"]) == 1
    # row 5 sets the budget; rows 2 and 4 stop after the iteration that reaches it
    budget = rows[5]["train_tokens"]
    assert rows[5]["train_iterations"] == 2
    for n in (2, 4, 7):
        one_more = budget / 2 + 4 * 5  # at most one more iteration: 4 envs x up to 5 tokens per agent
        assert budget <= rows[n]["train_tokens"] < budget + one_more
    assert rows[2]["train_iterations"] > 2  # one agent generates fewer tokens per iteration
    # the shared row trained one adapter; the per-role row one per agent
    seed = out / "seed0"
    shared_ckpt = json.loads((seed / "team-shared" / "done.json").read_text())["checkpoint"]
    assert [p.name for p in (Path(shared_ckpt) / "adapters").iterdir()] == ["shared"]
    per_role = json.loads((seed / "team-per-role" / "done.json").read_text())["checkpoint"]
    assert sorted(p.name for p in (Path(per_role) / "adapters").iterdir()) == ["planner", "solver"]
    # the single agent sees only the problem: the team generates more tokens per problem
    assert rows[3]["eval_tokens_per_problem"] > rows[1]["eval_tokens_per_problem"]
    k = rows[6]["k"]
    assert k == max(1, round(rows[5]["eval_tokens_per_problem"] / rows[1]["eval_tokens_per_problem"]))
    assert set(summary["paired"]) == {"2 vs 5", "5 vs 6", "2 vs 7", "5 vs 7"}
    frozen = json.loads((seed / "team-frozen-planner" / "done.json").read_text())["checkpoint"]
    assert sorted(p.name for p in (Path(frozen) / "adapters").iterdir()) == ["planner", "solver"]
    for t in summary["paired"].values():
        assert 0.0 <= t["p"] <= 1.0 and t["better_first"] + t["better_second"] <= 4
    table = (out / "table.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 8 and f"(k={k})" in table  # head + 7
    # a second call reuses every run and evaluation: the same numbers, no new files
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in ("results.json", "table.md"))
    again = script.main(argv)
    assert json.dumps(again["rows"]) == json.dumps(summary["rows"])
    assert (
        sorted(p for p in out.rglob("*") if p.is_file() and p.name not in ("results.json", "table.md"))
        == files
    )
    # a cache made with other settings is not silently reused
    with pytest.raises(SystemExit, match="other settings"):
        script.main([*argv[:-6], "--limit", "3", "--out", str(out), *argv[-2:]])


def test_wilson_interval_and_the_single_agent_config_by_hand(tmp_path):
    script = load_script()
    lo, hi = script.wilson(5, 10)
    assert abs(lo - 0.2366) < 1e-3 and abs(hi - 0.7634) < 1e-3  # textbook values for 5/10
    assert script.wilson(0, 4)[0] == 0.0
    from marft.compose import load_config

    team = load_config(str(tiny_team(tmp_path)))
    single = script.single_config(team, None, "alone")
    (agent,) = single.team.agents
    assert (agent.role, agent.system_prompt, agent.observes, agent.graded) == ("solver", "alone", [], True)
    assert single.env == team.env and single.algorithm == team.algorithm


def test_a_vote_without_answers_is_reported_not_scored():
    """Coding envs give programs, not answers: row 6 says so instead of scoring 0."""
    script = load_script()
    row = {"scores": [1.0, 0.0], "tokens_per_problem": 10.0, "eval_s": 1.0}
    seed = {n: dict(row) for n in range(1, 7)}
    seed[6] = {**row, "scores": None, "k": 2}
    summary = script.summarize([seed], [0])
    assert summary["rows"][6]["accuracy"] is None and set(summary["paired"]) == {"2 vs 5"}
    assert summary["rows"][5]["accuracy"] == 0.5
    assert "no answers to vote on" in script.markdown(summary)


def test_variant_rows_are_parsed_with_their_overrides():
    script = load_script()
    spec = "nested: algorithm.group_baseline=nested; algorithm.branching=[2,2]"
    assert script.parse_variants([spec]) == [
        ("nested", ["algorithm.group_baseline=nested", "algorithm.branching=[2,2]"])
    ]
    assert script.slug("frozen planner (lr 1e-5)") == "frozen-planner--lr-1e-5"
    for bad in ["no colon", "label:", ": a=1", "x: novalue"]:
        with pytest.raises(SystemExit, match="--variant"):
            script.parse_variants([bad])
