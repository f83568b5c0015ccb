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
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("wandb")
pytest.importorskip("mlflow")
pytest.importorskip("trackio")

from marft.reporting.metrics import read_metrics, reproducible  # noqa: E402
from marft.reporting.trackers import TRANSCRIPT_COLUMNS, tracker_metrics  # noqa: E402

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


# ------------------------------------------------------------------------------ reading back


def _wandb_records(path: Path):
    """The protobuf records of a W&B ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of
    ``crc32 u32, length u16, type u8`` chunks after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""


def _wandb(run: Path) -> dict:
    """Every session of the offline W&B run: ids, history rows by step, config, artifacts."""
    out = {"ids": set(), "steps": [], "history": {}, "config": {}, "artifacts": [], "tables": {}}
    for f in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        for rec in _wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                out["ids"].add(rec.run.run_id)
                out["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "history":
                item = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item}
                step = item["_step"]
                out["steps"].append(step)
                out["history"][step] = item
                if "transcripts/path" in item:
                    table = json.loads((f.parent / "files" / item["transcripts/path"]).read_text())
                    out["tables"][step] = table
            elif kind == "artifact":
                out["artifacts"].append((rec.artifact.type, [c.path for c in rec.artifact.manifest.contents]))
    return out


def _mlflow(run: Path) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run.parent / 'mlflow.db'}")
    exp = client.get_experiment_by_name("marft")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "a resume must continue the run, not start another"
    r = runs[0]
    history = {k: client.get_metric_history(r.info.run_id, k) for k in r.data.metrics}

    def files(path=None):
        for a in client.list_artifacts(r.info.run_id, path):
            yield from files(a.path) if a.is_dir else [a.path]

    table = client.download_artifacts(r.info.run_id, "transcripts/iter-000000.json", str(run / "dl"))
    return {
        "id": r.info.run_id,
        "status": r.info.status,
        "params": r.data.params,
        "history": history,
        "files": sorted(files()),
        "table": json.loads(Path(table).read_text()),
    }


def _trackio(env: dict[str, str]) -> dict:
    """Trackio's local database, read in a fresh process (Trackio fixes its folder at import)."""
    code = (
        "import json; from trackio.sqlite_storage import SQLiteStorage as S;"
        "print(json.dumps({'runs': S.get_runs('marft'), 'logs': S.get_logs('marft', 'run'),"
        "'config': S.get_run_config('marft', 'run'),"
        "'artifacts': S.get_run_artifacts('marft', 'run', None)}, default=str))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tensorboard(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(run / "tensorboard"))
    mux.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for name in mux.Runs():
        acc = mux.GetAccumulator(name)
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


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

    wb = _wandb(run)
    assert wb["ids"] == {manifest["loggers"]["wandb"]}
    assert sorted(wb["steps"]) == [0, 1, 2], "each step once across both sessions"
    for step, want in enumerate(expected):
        got = wb["history"][step]
        assert all(_close(got[k], v) for k, v in want.items()), step
    assert wb["config"]["algorithm"] == config["algorithm"]
    assert wb["config"]["team"] == config["team"]
    for step, table in wb["tables"].items():
        assert table["columns"] == list(TRANSCRIPT_COLUMNS)
        assert {row[3] for row in table["data"]} == set(ROLES) and all(r[0] == step for r in table["data"])
    assert sorted(wb["tables"]) == [0, 1, 2]
    assert ("report", ["report.html"]) in wb["artifacts"]

    ml = _mlflow(run)
    assert ml["id"] == manifest["loggers"]["mlflow"] and ml["status"] == "FINISHED"
    assert ml["params"]["algorithm.name"] == config["algorithm"]["name"]
    assert ml["params"]["team.agents.0.role"] == "speaker"
    for key in expected[0]:
        hist = ml["history"][key]
        assert sorted(m.step for m in hist) == [0, 1, 2], key
        assert all(_close(m.value, expected[m.step][key]) for m in hist), key
    assert {"config.yaml", "report.html", "transcripts/iter-000002.json"} <= set(ml["files"])
    assert ml["table"]["columns"] == list(TRANSCRIPT_COLUMNS) and ml["table"]["data"]

    tk = _trackio(env)
    assert tk["runs"] == ["run"]
    steps = [int(float(log["step"])) for log in tk["logs"]]
    assert sorted(steps) == [0, 1, 2]
    for log in tk["logs"]:
        want = expected[int(float(log["step"]))]
        assert all(_close(float(log[k]), v) for k, v in want.items())
        assert log["transcripts"]["_type"] == "trackio.table" and log["transcripts"]["_value"]
    assert tk["config"]["algorithm"] == config["algorithm"]
    assert "report" in json.dumps(tk["artifacts"])

    tb = _tensorboard(run)
    for key, value in expected[0].items():
        if key != "iteration":
            assert sorted(s for s, _ in tb[key]) == [0, 1, 2], key
            assert _close(dict(tb[key])[0], value), key
