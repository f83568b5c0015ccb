"""Weights & Biases: metrics, the config, a transcripts table per iteration, the report artifact."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from marft.config import RunConfig
from marft.reporting.trackers.base import TRACKERS, RunInfo, Tracker, TrackerSpec, TranscriptTable

EXIT_CODES = {"finished": 0, "killed": 130, "failed": 1}
"""The exit code W&B records for each way a session ends (W&B marks non-zero as crashed)."""


class WandbTracker(Tracker):
    """A W&B run whose steps are the iterations. Files (offline runs too) go under
    ``run_dir/wandb``; ``wandb sync run_dir/wandb/offline-run-*`` uploads an offline run."""

    def __init__(self, run: RunConfig) -> None:
        self.cfg = run.wandb

    def start(self, info: RunInfo) -> str:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            group=self.cfg.group,
            tags=self.cfg.tags or None,
            mode=self.cfg.mode,
            name=info.name,
            id=info.run_id,
            resume="allow",  # with the checkpoint's id: continue that run
            dir=str(info.run_dir),
            config=info.config,
            job_type="train",
            reinit="create_new",  # another run in this process (tests, notebooks) keeps its own
        )
        if info.run_id:  # the config may have changed on resume (e.g. more iterations)
            self.run.config.update(info.config, allow_val_change=True)
        return self.run.id

    def stored_through(self) -> int | None:
        # A resumed online run continues at W&B's own next step (what its server stored).
        if self.run.resumed and self.run.step > 0:
            return self.run.step - 1
        return None

    def log(self, step: int, metrics: Mapping[str, float], table: TranscriptTable | None) -> None:
        data: dict = dict(metrics)
        if table is not None and table.rows:
            data["transcripts"] = self.wandb.Table(columns=list(table.columns), data=table.rows)
        self.run.log(data, step=step)

    def artifact(self, path: Path, kind: str) -> None:
        art = self.wandb.Artifact(f"{kind}-{self.run.id}", type=kind)
        art.add_file(str(path))
        self.run.log_artifact(art)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=EXIT_CODES[status])


TRACKERS.register("wandb")(TrackerSpec(WandbTracker, module="wandb", extra="wandb"))
