"""The real trackers, offline: a 3-iteration demo run logs to TensorBoard, W&B (offline mode),
MLflow (a local SQLite store) and Trackio (a local database); what each stored is read back and
compared with ``metrics.jsonl``. Then the run loses its last checkpoint (a kill after iteration 2
was logged, before it was saved) and resumes: every tracker continues the same run and holds each
step once."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXTRA = "the trackers extra is not installed: pip install -e '.[trackers]'"
pytest.importorskip("wandb", reason=EXTRA)
pytest.importorskip("mlflow", reason=EXTRA)
pytest.importorskip("trackio", reason=EXTRA)

from marft.reporting.metrics import read_metrics, reproducible  # noqa: E402
from marft.reporting.trackers import TRANSCRIPT_COLUMNS, tracker_metrics  # noqa: E402
from marft.reporting.trackers.readback import (  # noqa: E402
    Stored,
    mlflow_stored,
    tensorboard_stored,
    trackio_stored,
    wandb_offline,
)

ROLES = ["speaker", "listener"]
LOGGERS = "run.loggers=[tensorboard,wandb,mlflow,trackio]"
SETTINGS = [
    LOGGERS,
    "run.wandb.mode=offline",
    "run.iterations=3",
    "run.checkpoint_every=2",
    "run.progress=false",
    "env.n_envs=8",
    "algorithm.ppo_epochs=1",
]


def _env(tmp: Path) -> dict[str, str]:
    """Every tracker's files under ``tmp``; nothing reaches a network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "TRACKIO_"))}
    for var, sub in [
        ("WANDB_CACHE_DIR", "wandb-cache"),
        ("WANDB_DATA_DIR", "wandb-data"),
        ("WANDB_CONFIG_DIR", "wandb-config"),
        ("WANDB_ARTIFACT_DIR", "wandb-artifacts"),
        ("TRACKIO_DIR", "trackio"),
    ]:
        env[var] = str(tmp / sub)
    env.update(WANDB_SILENT="true", HF_HUB_OFFLINE="1")
    return env


def _marft(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "marft.cli", "train", *args], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# ----------------------------------------------------------------------------------- the test


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trackers")
    env = _env(tmp)
    run = tmp / "runs" / "run"
    args = [a for s in SETTINGS for a in ("--set", s)]
    _marft(env, "demo", "--out", str(run), *args)
    first = read_metrics(run)
    shutil.rmtree(run / "checkpoints" / "iter-000003")  # killed after logging iteration 2
    _marft(env, "--resume", str(run))
    return run, env, first, read_metrics(run)


def _same_as(stored: Stored, expected: list[dict[str, float]], name: str) -> None:
    """Each step once, every metric of ``metrics.jsonl`` there with its value."""
    assert stored.steps == [0, 1, 2], f"{name}: each step once across both sessions"
    for step, want in enumerate(expected):
        got = stored.metrics[step]
        wrong = {k: (got.get(k), v) for k, v in want.items() if k != "iteration" or name != "tensorboard"}
        wrong = {k: gv for k, gv in wrong.items() if gv[0] is None or not _close(gv[0], gv[1])}
        assert not wrong, f"{name}, step {step}: {wrong}"


def _table_ok(table: dict, step: int) -> None:
    assert table["columns"] == list(TRANSCRIPT_COLUMNS)
    agent, it = TRANSCRIPT_COLUMNS.index("agent"), TRANSCRIPT_COLUMNS.index("iteration")
    assert {row[agent] for row in table["data"]} == set(ROLES)
    assert all(row[it] == step for row in table["data"])


def test_every_tracker_holds_the_rows_config_transcripts_and_report(logged_run):
    run, env, first, rows = logged_run
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    config = yaml.safe_load((run / "config.yaml").read_text())
    sent = json.loads((run / "loggers.json").read_text())
    manifest = json.loads((run / "checkpoints" / "iter-000003" / "manifest.json").read_text())
    assert {k: v["id"] for k, v in sent.items()} == manifest["loggers"]
    assert all(v["step"] == 2 for v in sent.values())
    # What was sent: the first session's rows (iteration 2 was not sent again after the resume);
    # exact resume makes the redone row equal except for measured times and memory.
    expected = [tracker_metrics(r, ROLES) for r in first]
    for before, after in zip(first, rows, strict=True):
        assert reproducible(before) == reproducible(after)
    assert "listener/policy_loss" in expected[0] and "speaker/entropy" in expected[0]
    ids = manifest["loggers"]

    wb = wandb_offline(run)
    assert wb.run_ids == {ids["wandb"]}
    _same_as(wb, expected, "wandb")
    assert wb.config["algorithm"] == config["algorithm"] and wb.config["team"] == config["team"]
    assert sorted(wb.tables) == [0, 1, 2]
    for step, table in wb.tables.items():
        _table_ok(table, step)
    assert "report.html" in wb.artifacts

    ml = mlflow_stored(run)
    assert ml.run_ids == {ids["mlflow"]} and ml.status == "FINISHED"
    _same_as(ml, expected, "mlflow")
    assert ml.config["algorithm.name"] == config["algorithm"]["name"]
    assert ml.config["team.agents.0.role"] == "speaker"
    assert {"config.yaml", "report.html"} <= set(ml.artifacts)
    assert sorted(ml.tables) == [0, 1, 2]
    for step, table in ml.tables.items():
        _table_ok(table, step)

    tk = trackio_stored("marft", "run", env["TRACKIO_DIR"])
    assert tk.run_ids == {ids["trackio"]} == {"run"}
    _same_as(tk, expected, "trackio")
    assert tk.config["algorithm"] == config["algorithm"]
    assert sorted(tk.tables) == [0, 1, 2]
    for step, table in tk.tables.items():
        _table_ok(table, step)
    assert "report-run" in tk.artifacts[0]

    _same_as(tensorboard_stored(run), expected, "tensorboard")
