"""Trackio: metrics, the config, a transcripts table per iteration, the report artifact."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from marft.config import RunConfig
from marft.reporting.trackers.base import TRACKERS, RunInfo, Tracker, TrackerSpec, TranscriptTable


class TrackioTracker(Tracker):
    """A Trackio run in ``run.trackio.project`` (a local SQLite database under ``TRACKIO_DIR``,
    ``~/.cache/huggingface/trackio`` by default, or a Space); ``trackio show`` opens the dashboard.
    Trackio resumes runs by name, so the run's id is its name."""

    def __init__(self, run: RunConfig) -> None:
        self.cfg = run.trackio

    def start(self, info: RunInfo) -> str:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(
            project=self.cfg.project,
            name=info.run_id or info.name,
            group=self.cfg.group,
            space_id=self.cfg.space_id,
            config=info.config,
            resume="allow" if info.run_id else "never",
            embed=False,
            auto_log_gpu=False,  # marft logs its own memory figures
            auto_log_cpu=False,
        )
        self.resumed = info.run_id is not None
        return self.run.name

    def stored_through(self) -> int | None:
        # Trackio writes in a background thread; on a resume it reads the last step it stored
        # (kept as the run's next step: no public accessor in Trackio 0.43).
        next_step = getattr(self.run, "_next_step", None)
        return next_step - 1 if self.resumed and isinstance(next_step, int) else None

    def log(self, step: int, metrics: Mapping[str, float], table: TranscriptTable | None) -> None:
        data: dict = dict(metrics)
        if table is not None and table.rows:
            data["transcripts"] = self.trackio.Table(columns=list(table.columns), data=table.rows)
        self.run.log(data, step=step)

    def artifact(self, path: Path, kind: str) -> None:
        self.run.log_artifact(str(path), name=f"{kind}-{self.run.name}", type=kind)

    def finish(self, status: str) -> None:
        self.run.finish()


TRACKERS.register("trackio")(TrackerSpec(TrackioTracker, module="trackio", extra="trackio"))
