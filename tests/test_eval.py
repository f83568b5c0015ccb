"""marft eval end to end on 20 GSM8K problems (the test fixture) with the tiny model, and its metrics
by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marft.eval.evaluate import Evaluator, ProblemResult, majority, pass_at_k
from tests.conftest import DATA, cli_in_process, write_tiny_config

GSM8K = DATA / "gsm8k_test.jsonl"


def math_config(tmp_path) -> Path:
    return write_tiny_config(
        tmp_path / "math.yaml",
        [
            {"role": "reasoner", "system_prompt": "plan the solution"},
            {"role": "actor", "system_prompt": "give the answer", "graded": True},
        ],
        {
            "name": "math",
            "n_envs": 8,
            "horizon": 2,
            "kwargs": {"data": str(GSM8K), "limit": 20, "max_attempts": 2},
        },
        sampling={"max_new_tokens": 6},
        algorithm={"name": "grpo", "group_size": 4, "ppo_epochs": 1},
    )


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "marft.cli", *args], capture_output=True, text=True)


def test_marft_eval_end_to_end_on_20_problems(tmp_path):
    cfg = math_config(tmp_path)
    train = run_cli("train", str(cfg), "--out", str(tmp_path / "run"))
    assert train.returncode == 0, train.stderr
    out = tmp_path / "eval"
    proc = run_cli(
        "eval", "--checkpoint", str(tmp_path / "run"), "--limit", "20", "--samples", "2", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == 20 and summary["samples"] == 2
    for key in ("accuracy", "pass@1", "pass@2", "maj@2"):
        assert 0.0 <= summary["team"][key] <= 1.0
    # tokens the team generated per sample: 2 agents x 2 attempts x at most 6 tokens
    assert 0 < summary["team"]["generated_tokens"] <= 24
    assert set(summary["ablation"]) == {"reasoner", "actor"}
    assert "accuracy_drop" in summary["ablation"]["actor"]
    transcripts = [json.loads(x) for x in (out / "transcripts.jsonl").read_text().splitlines()]
    assert len(transcripts) == 20 * 2 * 3  # the team, then each agent swapped to base
    assert {t["problem_index"] for t in transcripts} == set(range(20))
    first = transcripts[0]["turns"][0]
    assert [a["role"] for a in first["agents"]] == ["reasoner", "actor"]
    assert "reference" in first["info"]
    assert all(0 < t["generated_tokens"] <= 24 for t in transcripts)
    assert "trained team" in proc.stdout and "actor -> base" in proc.stdout
    # grader time-outs and failures are counted, not silent: in the summary, the table and metrics.jsonl
    assert summary["env_metrics"]["grader_calls"] > 0 and "grader_timeouts" in summary["env_metrics"]
    assert "env counters: grader_calls" in proc.stdout
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["grader_calls"] > 0 and {"grader_timeouts", "grader_failures"} <= set(row)
    # a checkpoint folder works as well as its run directory (the config is found two levels up)
    ckpt = tmp_path / "run" / "checkpoints" / "iter-000001"
    proc = run_cli(
        "eval", "--checkpoint", str(ckpt), "--limit", "2", "--no-ablation", "--out", str(tmp_path / "e2")
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "e2" / "summary.json").read_text())["checkpoint"] == str(ckpt)


def test_eval_errors_are_clear(tmp_path, capsys):
    proc = cli_in_process(capsys, "eval", "--checkpoint", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "give a CONFIG" in proc.stderr
    proc = cli_in_process(
        capsys, "eval", str(math_config(tmp_path)), "--checkpoint", str(tmp_path), "--limit", "2"
    )
    assert (
        proc.returncode == 2 and "not a marft run directory" in proc.stderr and "Traceback" not in proc.stderr
    )
    proc = cli_in_process(capsys, "eval", "demo")
    assert proc.returncode == 2 and "no problem set" in proc.stderr


def test_pass_at_k_and_majority_by_hand(tmp_path):
    # n=4 samples, c=1 correct: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 0.5, pass@4 = 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0
    from marft.compose import make_env

    ev = Evaluator.__new__(Evaluator)
    ev.samples = 3
    ev.same_answer = make_env("math", {"data": "arithmetic", "arith_count": 1}).same_answer
    results = [
        ProblemResult(0, [True, False, False], ["12", "1,2", "7"]),  # 3 distinct answers: the first wins
        ProblemResult(1, [False, True, True], ["4", "5", "5.0"]),  # 5 and 5.0 are one answer
        ProblemResult(2, [True, True, False], ["1,000", "1000", "3"]),  # 1,000 -> 1000: majority
        ProblemResult(3, [False, False, True], [None, "8", "9"]),  # no answer is no vote; tie -> "8"
    ]
    s = ev.summarize(results)
    assert s["accuracy"] == pytest.approx(6 / 12)
    assert s["pass@3"] == pytest.approx(1.0)
    assert s["maj@3"] == pytest.approx(3 / 4)
    assert majority(["4", "5", "5.0"], ev.same_answer) == 1 and majority([None, None], str.__eq__) is None


def test_base_rows_run_on_the_bare_base():
    from marft.models import SamplingParams
    from marft.rollout import HFBackend, Prompts
    from tests.conftest import make_team_model

    model = make_team_model()
    with torch.no_grad():
        for p in model.adapter_parameters("speaker"):
            p.add_(0.5 * torch.randn_like(p))
    enc = model.tokenizer(["name the secret colour red", "red blue"], return_tensors="pt", padding=True)
    backend = HFBackend(model, SamplingParams(), max_new_tokens=4)
    base = backend.generate(Prompts(enc["input_ids"], enc["attention_mask"]), ["__base__"] * 2)
    with model.adapter(None):
        ref = model.forward_logits(enc["input_ids"], enc["attention_mask"], keep=1).logits
    mixed = model.forward_logits(
        enc["input_ids"], enc["attention_mask"], keep=1, adapter_names=["__base__", "speaker"]
    ).logits
    torch.testing.assert_close(mixed[0], ref[0])
    assert not torch.allclose(mixed[1], ref[1])
    assert base.response_ids.shape[0] == 2


def test_greedy_eval_gives_every_sample_the_same_answer(tmp_path):
    proc = run_cli(
        "eval",
        str(math_config(tmp_path)),
        "--limit",
        "4",
        "--samples",
        "3",
        "--greedy",
        "--out",
        str(tmp_path / "e"),
    )
    assert proc.returncode == 0, proc.stderr
    answers: dict[int, set] = {}
    for line in (tmp_path / "e" / "transcripts.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t["turns"]:
            answers.setdefault(t["problem_index"], set()).add(t["turns"][0]["agents"][-1]["response"])
    assert len(answers) == 4 and all(len(a) == 1 for a in answers.values())


def test_routing_teams_get_each_routes_share_and_accuracy():
    from types import SimpleNamespace

    from marft.eval.evaluate import Evaluator, ProblemResult, format_table

    results = [
        ProblemResult(0, [True], ["4"], [10], ["lead"]),
        ProblemResult(1, [False], ["5"], [30], ["lead>solver>verifier>lead"]),
        ProblemResult(2, [True], ["6"], [30], ["lead>solver>verifier>lead"]),
    ]
    got = Evaluator.summarize(SimpleNamespace(samples=1, same_answer=str.__eq__), results)
    assert got["route_share/lead"] == pytest.approx(1 / 3) and got["route_accuracy/lead"] == 1.0
    assert got["route_accuracy/lead>solver>verifier>lead"] == 0.5
    table = format_table({"team": got, "ablation": {}, "checkpoint": None})
    assert "route lead>solver>verifier>lead: share 0.667, accuracy 0.500" in table
