"""``marft run``: one task through the team, messages labelled by role, the answer last."""

from __future__ import annotations

import io
import json

from tests.conftest import cli_in_process


def test_run_prints_each_message_then_the_answer(demo_run, capsys):
    proc = cli_in_process(capsys, "run", str(demo_run), "secret red", "--set", "run.progress=false")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("[speaker] ") and lines[1].startswith("[listener] ")
    assert lines[-1].startswith("answer (listener): ")
    assert lines[-1].removeprefix("answer (listener): ") in lines[1]


def test_run_json_transcript(demo_run, capsys):
    proc = cli_in_process(capsys, "run", str(demo_run), "secret blue", "--json", "--seed", "3")
    out = json.loads(proc.stdout)
    assert out["trained"] is True and out["task"] == "secret blue"
    assert [m["role"] for m in out["messages"]] == ["speaker", "listener"]
    assert out["answer"] == out["messages"][-1]["text"] and out["route"] == "speaker>listener"
    again = json.loads(
        cli_in_process(capsys, "run", str(demo_run), "secret blue", "--json", "--seed", "3").stdout
    )
    assert again["messages"] == out["messages"]  # --seed repeats the draws


def test_run_base_and_stdin(demo_run, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("secret green"))
    proc = cli_in_process(capsys, "run", str(demo_run), "--base", "-", "--json")
    out = json.loads(proc.stdout)
    assert out["trained"] is False and out["task"] == "secret green"


def test_run_without_a_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}\n")
    proc = cli_in_process(capsys, "run", str(tmp_path), "x")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no complete checkpoint" in proc.stderr
    proc = cli_in_process(capsys, "run", "demo", "x")
    assert proc.returncode == 2 and "--base" in proc.stderr
    proc = cli_in_process(capsys, "run", str(tmp_path / "missing"), "x")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = cli_in_process(capsys, "run", "demo", "--base")
    assert proc.returncode == 2 and "give the task" in proc.stderr
