"""Read back what each tracker stored for a run, locally and offline: W&B's offline files, an
MLflow store, Trackio's local database, TensorBoard's event files. Tests and
``benchmarks/fault_injection.py`` use it to check that every step is there once with the values
of ``metrics.jsonl``; it is also a way to see what a tracker got without its UI."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marft.reporting.trackers.mlflow_tracker import tracking_uri


@dataclass
class Stored:
    """What one tracker holds for one run (across every session of it).

    Attributes:
        run_ids: the tracker's ids of the run (one, when resumes continued it).
        steps: every step a metrics row was stored at, in order (a step twice: stored twice).
        metrics: step -> metric name -> value (the last stored, for a step stored twice).
        config: the run's config as the tracker keeps it.
        tables: step -> the transcripts table of that step (``{"columns": [...], "data": [...]}``).
        artifacts: names of the files stored with the run (the report).
        status: the run's final status, where the tracker keeps one.
    """

    run_ids: set[str] = field(default_factory=set)
    steps: list[int] = field(default_factory=list)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    tables: dict[int, dict[str, Any]] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    status: str | None = None

    def add(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append(step)
        self.metrics[step] = metrics


_BLOCK, _HEADER = 32768, 7


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a W&B ``.wandb`` file: a LevelDB-style log of 32 KiB blocks of
    ``crc32 u32, length u16, type u8`` chunks after a 7-byte header. A record cut by a kill ends
    the reading."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), _HEADER, b""
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if (length == 0 and kind == 0) or pos + _HEADER + length > len(data):
            return
        buf += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            try:
                rec.ParseFromString(buf)
            except DecodeError:
                return
            yield rec
            buf = b""


def wandb_offline(run_dir: Path) -> Stored:
    """Every session of a run's offline W&B files (``run_dir/wandb/offline-run-*``)."""
    out = Stored()
    for f in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")):
        for rec in wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                out.run_ids.add(rec.run.run_id)
                out.config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "history":
                item = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item}
                step = int(item["_step"])
                out.add(step, {k: v for k, v in item.items() if isinstance(v, (int, float))})
                if "transcripts/path" in item:
                    out.tables[step] = json.loads((f.parent / "files" / item["transcripts/path"]).read_text())
            elif kind == "artifact":
                out.artifacts += [c.path for c in rec.artifact.manifest.contents]
    return out


def mlflow_stored(run_dir: Path, uri: str | None = None, experiment: str = "marft") -> Stored:
    """The MLflow runs of ``experiment`` whose ``marft.run_dir`` tag is ``run_dir`` (the store:
    ``uri``, else where marft puts it by default)."""
    from mlflow.tracking import MlflowClient

    from marft.config import MlflowConfig

    run_dir = Path(run_dir)
    client = MlflowClient(tracking_uri=uri or tracking_uri(MlflowConfig(), run_dir))
    exp = client.get_experiment_by_name(experiment)
    out = Stored()
    for r in client.search_runs([exp.experiment_id]) if exp else []:
        if r.data.tags.get("marft.run_dir") != str(run_dir.resolve()):
            continue
        rid = r.info.run_id
        out.run_ids.add(rid)
        out.status, out.config = r.info.status, dict(r.data.params)
        points: dict[int, dict[str, float]] = {}
        for key in r.data.metrics:
            for m in client.get_metric_history(rid, key):
                points.setdefault(m.step, {})
                if key in points[m.step]:  # the same step stored twice
                    out.steps.append(m.step)
                points[m.step][key] = m.value
        for step in sorted(points):
            out.add(step, points[step])
        out.steps.sort()
        stack = [None]
        while stack:
            for a in client.list_artifacts(rid, stack.pop()):
                stack.append(a.path) if a.is_dir else out.artifacts.append(a.path)
        with tempfile.TemporaryDirectory() as tmp:
            for name in out.artifacts:
                if name.startswith("transcripts/iter-"):
                    local = client.download_artifacts(rid, name, tmp)
                    out.tables[int(name[len("transcripts/iter-") : -len(".json")])] = json.loads(
                        Path(local).read_text()
                    )
    return out


def trackio_stored(project: str, run_name: str, trackio_dir: str | None = None) -> Stored:
    """A Trackio run from its local database, read in a fresh process (Trackio fixes its folder
    when imported): ``trackio_dir``, else ``TRACKIO_DIR``, else Trackio's default."""
    env = dict(os.environ)
    if trackio_dir is not None:
        env["TRACKIO_DIR"] = trackio_dir
    code = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; p, r = sys.argv[1:];"
        "print(json.dumps({'runs': S.get_runs(p), 'logs': S.get_logs(p, r), 'config': S.get_run_config(p, r),"
        "'artifacts': S.get_run_artifacts(p, r, None)}, default=str))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, project, run_name], env=env, capture_output=True, text=True, check=True
    )
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    out = Stored(run_ids={r for r in got["runs"] if r == run_name}, config=got["config"] or {})
    for log in got["logs"]:
        step = int(float(log["step"]))
        out.add(step, {k: float(v) for k, v in log.items() if isinstance(v, (int, float))})
        if isinstance(log.get("transcripts"), dict):
            value = log["transcripts"]["_value"]
            cols = list(value[0]) if value else []
            out.tables[step] = {"columns": cols, "data": [[row[c] for c in cols] for row in value]}
    out.artifacts = [json.dumps(got["artifacts"], default=str)]
    return out


def tensorboard_stored(run_dir: Path) -> Stored:
    """The scalars of a run's TensorBoard event files (every file: every session)."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(Path(run_dir) / "tensorboard"))
    mux.Reload()
    points: dict[int, dict[str, float]] = {}
    out = Stored()
    for name in mux.Runs():
        acc = mux.GetAccumulator(name)
        for tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                points.setdefault(e.step, {})
                if tag in points[e.step]:
                    out.steps.append(e.step)
                points[e.step][tag] = e.value
    for step in sorted(points):
        out.add(step, points[step])
    out.steps.sort()
    return out
