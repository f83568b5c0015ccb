"""MLflow: metrics, the config as parameters, a transcripts table per iteration, the report."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from marft.config import MlflowConfig, RunConfig
from marft.reporting.trackers.base import (
    TRACKERS,
    RunInfo,
    Tracker,
    TrackerSpec,
    TranscriptTable,
    flat_params,
)

MARKER = "env_steps"
"""A metric of every row, sent last: the last step it has is the last whole row MLflow stored."""
STATUS = {"finished": "FINISHED", "killed": "KILLED", "failed": "FAILED"}
BATCH = 1000
"""The most metrics (and parameters: 100) MLflow takes in one ``log_batch``."""
MAX_PARAM = 6000
"""MLflow's longest parameter value (characters); longer values are cut, the whole config is the
``config.yaml`` artifact."""


def mlflow_name(key: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, ``_ - . / :`` and spaces):
    ``route_share/lead>solver`` becomes ``route_share/lead_solver``."""
    return _NOT_ALLOWED.sub("_", key)


_NOT_ALLOWED = re.compile(r"[^\w\-./: ]")


def tracking_uri(cfg: MlflowConfig, run_dir: Path) -> str:
    """``run.mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite file beside the run
    directory (MLflow's file store is read-only from MLflow 3 on)."""
    return (
        cfg.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(run_dir.resolve().parent / 'mlflow.db').as_posix()}"
    )


class MlflowTracker(Tracker):
    """An MLflow run in ``run.mlflow.experiment``, steps being the iterations. The config is the
    run's parameters (dotted keys) and its ``config.yaml`` artifact; each iteration's transcripts
    are the table ``transcripts/iter-NNNNNN.json``; the report is ``report.html``. Names MLflow
    refuses (a route's ``>``) have those characters replaced by ``_``."""

    def __init__(self, run: RunConfig) -> None:
        self.cfg = run.mlflow

    def start(self, info: RunInfo) -> str:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(self.cfg, info.run_dir)
        self.client = client = MlflowClient(tracking_uri=uri)
        if info.run_id is not None:
            self.run_id = client.get_run(info.run_id).info.run_id  # fails loudly if it is not there
            client.update_run(self.run_id, status="RUNNING")
        else:
            exp_id = self._experiment(uri, info.run_dir)
            run = client.create_run(
                exp_id, run_name=info.name, tags={"marft.run_dir": str(info.run_dir.resolve())}
            )
            self.run_id = run.info.run_id
            params = [Param(mlflow_name(k), v[:MAX_PARAM]) for k, v in flat_params(info.config).items()]
            for i in range(0, len(params), 100):
                client.log_batch(self.run_id, params=params[i : i + 100])
        # Parameters cannot change; the config of this session (e.g. more iterations) is the artifact.
        client.log_dict(self.run_id, info.config, "config.yaml")
        return self.run_id

    def _experiment(self, uri: str, run_dir: Path) -> str:
        """The experiment's id, created if missing (by this run or, at the same moment, another)."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        # Artifacts beside the store, not in whatever folder marft was started from.
        root = run_dir.resolve().parent / "mlartifacts" if uri.startswith("sqlite:") else None
        try:
            return self.client.create_experiment(
                self.cfg.experiment, artifact_location=root.as_uri() if root else None
            )
        except MlflowException:  # another run created it first
            exp = self.client.get_experiment_by_name(self.cfg.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def stored_through(self) -> int | None:
        return max((m.step for m in self.client.get_metric_history(self.run_id, MARKER)), default=-1)

    def log(self, step: int, metrics: Mapping[str, float], table: TranscriptTable | None) -> None:
        from mlflow.entities import Metric

        if table is not None and table.rows:
            # The layout of MLflow's table artifacts (pandas "split": mlflow.load_table reads it),
            # written with log_dict: log_table also lists every table in one run tag of at most
            # 8,000 characters, which a long run overflows (then every later call fails).
            self.client.log_dict(
                self.run_id,
                {"columns": list(table.columns), "data": table.rows},
                f"transcripts/iter-{step:06d}.json",
            )
        # The table first and env_steps in the last batch: MLflow has a step (stored_through) only
        # once all of it is there.
        now = int(time.time() * 1000)
        batch = [Metric(mlflow_name(k), v, now, step) for k, v in metrics.items() if k != MARKER]
        batch += [Metric(MARKER, metrics[MARKER], now, step)] if MARKER in metrics else []
        for i in range(0, len(batch), BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + BATCH])

    def artifact(self, path: Path, kind: str) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUS[status])


TRACKERS.register("mlflow")(TrackerSpec(MlflowTracker, module="mlflow", extra="mlflow"))
