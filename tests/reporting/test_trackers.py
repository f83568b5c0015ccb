"""The trackers' shared pieces: metric names, the transcripts table, flat parameters, the install
check, and the set that never sends an iteration twice across a resume."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest

from marft.config import ConfigError, RunConfig, parse_config
from marft.reporting.trackers import (
    SENT,
    TRACKERS,
    RunInfo,
    Tracker,
    TrackerSet,
    check_trackers,
    flat_params,
    tracker_metrics,
    transcript_table,
)
from marft.reporting.trackers.base import TrackerSpec


def test_tracker_metrics_puts_each_agent_under_its_role_and_drops_non_numbers():
    row = {
        "iteration": 4,
        "episode_return": 0.25,
        "policy_loss/writer": -0.5,
        "entropy/outliner": 1.0,
        "kl/other": 2.0,  # "other" is no role: the name stays
        "nonfinite_skip/writer": 0,
        "judge_score": None,
        "approx_kl/writer": float("nan"),
        "flag": True,
        "note": "text",
    }
    assert tracker_metrics(row, ["outliner", "writer"]) == {
        "iteration": 4.0,
        "episode_return": 0.25,
        "writer/policy_loss": -0.5,
        "outliner/entropy": 1.0,
        "kl/other": 2.0,
        "writer/nonfinite_skip": 0.0,
    }


def test_transcript_table_has_a_row_per_agent_action():
    item = {
        "env": 3,
        "episode_return": 1.5,
        "turns": [
            {
                "step": 0,
                "reward": 1.5,
                "agents": [
                    {
                        "role": "reasoner",
                        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                        "response": "plan",
                        "reward": 0.0,
                    },
                    {
                        "role": "actor",
                        "messages": [{"role": "user", "content": "Q\nreasoner: plan"}],
                        "response": "42",
                        "reward": 1.5,
                    },
                ],
            }
        ],
    }
    table = transcript_table(7, [item])
    assert table.rows == [
        [7, 3, 0, "reasoner", "system: S\n\nuser: Q", "plan", 0.0, 1.5, 1.5],
        [7, 3, 0, "actor", "user: Q\nreasoner: plan", "42", 1.5, 1.5, 1.5],
    ]


def test_flat_params_dots_nested_keys_and_indexes_lists_of_sections():
    cfg = {"run": {"seed": 1, "loggers": ["wandb"]}, "team": {"agents": [{"role": "a"}, {"role": "b"}]}}
    assert flat_params(cfg) == {
        "run.seed": "1",
        "run.loggers": '["wandb"]',
        "team.agents.0.role": "a",
        "team.agents.1.role": "b",
    }


def test_the_config_lists_exactly_the_registered_trackers():
    import typing

    from marft.config import LoggerName

    assert set(typing.get_args(LoggerName)) == set(TRACKERS.names())


def test_a_missing_tracker_is_a_config_error_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match=r"run.loggers: wandb is not installed: pip install 'marft\[wandb\]'"
    ):
        check_trackers(["tensorboard", "wandb"])
    check_trackers(["tensorboard"])
    with pytest.raises(ConfigError, match="choose from mlflow, tensorboard, trackio, wandb"):
        check_trackers(["neptune"])


def test_training_refuses_a_missing_tracker_before_anything_is_written(monkeypatch, tmp_path):
    from marft.trainer import Trainer

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    cfg = parse_config("demo", ["run.loggers=[mlflow]"])
    with pytest.raises(ConfigError, match=r"pip install 'marft\[mlflow\]'"):
        Trainer(cfg, tmp_path / "run").setup()
    assert not (tmp_path / "run").exists()


def test_run_config_refuses_unknown_repeated_and_old_logger_keys():
    with pytest.raises(ConfigError, match="run.loggers.0: must be one of"):
        parse_config("demo", ["run.loggers=[neptune]"])
    with pytest.raises(ConfigError, match="names wandb more than once"):
        parse_config("demo", ["run.loggers=[wandb,wandb]"])
    assert RunConfig().loggers == ["tensorboard"]


def test_an_older_runs_tensorboard_key_still_loads_as_loggers():
    with pytest.warns(FutureWarning, match="run.tensorboard is replaced by run.loggers"):
        cfg = parse_config("demo", ["run.tensorboard=false", "run.loggers=[tensorboard,mlflow]"])
    assert cfg.run.loggers == ["mlflow"] and cfg.run.tensorboard is None
    with pytest.warns(FutureWarning):
        assert parse_config("demo", ["run.tensorboard=true", "run.loggers=[]"]).run.loggers == ["tensorboard"]


class Recorder(Tracker):
    """A tracker that remembers what it received (and can be told to fail)."""

    made: list[Recorder] = []
    fail_start = False
    fail_log = False
    stored = None  # what the tracker says it stored (None: it cannot say)

    def __init__(self, run):
        super().__init__(run)
        self.steps, self.tables, self.files, self.status = [], [], [], None
        Recorder.made.append(self)

    def start(self, info):
        if Recorder.fail_start:
            raise OSError("no login")
        self.info = info
        return info.run_id or "run-1"

    def stored_through(self):
        return Recorder.stored

    def log(self, step, metrics, table):
        if Recorder.fail_log:
            raise OSError("server gone")
        self.steps.append(step)
        self.tables.append(table)

    def artifact(self, path, kind):
        self.files.append((path.name, kind))

    def finish(self, status):
        self.status = status


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setitem(TRACKERS._items, "rec", TrackerSpec(Recorder, module="json", extra=None))
    monkeypatch.setattr(Recorder, "made", [])
    return replace(RunConfig(), loggers=["rec"])


def test_a_resumed_run_sends_each_iteration_once(recorder, tmp_path):
    info = RunInfo("r", tmp_path, {"seed": 0})
    first = TrackerSet(recorder, info, {}, ["writer"])
    for it in range(3):
        first.log({"iteration": it, "policy_loss/writer": 0.1 * it}, [])
    first.artifact(tmp_path / "report.html", "report")
    first.close("killed")  # e.g. killed after iteration 2 was logged, before its checkpoint
    a = Recorder.made[0]
    assert a.steps == [0, 1, 2] and a.status == "killed" and a.files == [("report.html", "report")]
    assert json.loads((tmp_path / SENT).read_text()) == {"rec": {"id": "run-1", "step": 2}}

    # The checkpoint of iteration 2 holds the run id; iterations 2 and 3 are redone.
    again = TrackerSet(recorder, info, {"rec": "run-1"}, ["writer"])
    b = Recorder.made[1]
    assert b.info.run_id == "run-1"
    for it in (2, 3):
        again.log({"iteration": it}, [{"env": 0, "episode_return": 1.0, "turns": []}])
    again.close("finished")
    assert b.steps == [3] and b.status == "finished"

    # A tracker that says it stored only up to iteration 1 (2 was lost on its way) gets 2 again.
    Recorder.stored = 1
    try:
        TrackerSet(recorder, info, {"rec": "run-1"}, ["writer"]).log({"iteration": 2}, [])
    finally:
        Recorder.stored = None
    assert Recorder.made[2].steps == [2]

    # A new run (no id from a checkpoint) in a directory with an old record sends everything.
    fresh = TrackerSet(recorder, info, {}, ["writer"])
    fresh.log({"iteration": 0}, [])
    assert Recorder.made[3].steps == [0]


def test_a_failing_tracker_is_dropped_with_a_warning_and_the_run_goes_on(recorder, tmp_path):
    trackers = TrackerSet(recorder, RunInfo("r", tmp_path, {}), {}, [])
    Recorder.fail_log = True
    try:
        with pytest.warns(UserWarning, match="logger rec failed .*server gone.*metrics.jsonl has every row"):
            trackers.log({"iteration": 0}, [])
    finally:
        Recorder.fail_log = False
    trackers.log({"iteration": 1}, [])
    assert Recorder.made[0].steps == [] and Recorder.made[0].status == "failed"
    assert trackers.run_ids == {"rec": "run-1"}


def test_a_tracker_that_cannot_start_says_which_and_what_to_do(recorder, tmp_path):
    Recorder.fail_start = True
    try:
        with pytest.raises(RuntimeError, match="logger rec could not open its run .*no login.*drop rec"):
            TrackerSet(recorder, RunInfo("r", tmp_path, {}), {}, [])
    finally:
        Recorder.fail_start = False


def test_a_resumed_tracker_catches_up_on_rows_it_lost_before_the_checkpoint(recorder, tmp_path):
    info = RunInfo("r", tmp_path, {})
    first = TrackerSet(recorder, info, {}, [])
    for it in range(4):
        first.log({"iteration": it}, [])
    first.close("killed")
    assert json.loads((tmp_path / SENT).read_text())["rec"]["step"] == 3
    # The tracker stored only through iteration 1 (2 and 3 were on their way); the checkpoint is
    # at 3: iteration 2 comes from metrics.jsonl, 3 is redone.
    Recorder.stored = 1
    try:
        again = TrackerSet(recorder, info, {"rec": "run-1"}, [])
    finally:
        Recorder.stored = None
    item = {"env": 0, "episode_return": 1.0, "turns": [{"step": 0, "reward": 1.0, "agents": []}]}
    again.catch_up([{"iteration": it} for it in range(3)], {2: [item]})
    again.log({"iteration": 3}, [])
    assert Recorder.made[1].steps == [2, 3]
    assert Recorder.made[1].tables[0] is not None  # iteration 2's transcripts came along

    # A tracker added on resume (no id in the checkpoint) starts at the checkpoint.
    added = TrackerSet(recorder, info, {}, [])
    added.catch_up([{"iteration": it} for it in range(3)], {})
    assert Recorder.made[2].steps == []
