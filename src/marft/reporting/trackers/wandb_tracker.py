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

        self.wandb, self.run_dir = wandb, info.run_dir
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
        if self.run.offline:
            # What the earlier sessions' offline files hold (W&B writes them in 32 KiB blocks:
            # a kill loses the last few steps).
            from marft.reporting.trackers.readback import wandb_records

            last = -1
            for f in self.run_dir.glob(f"wandb/offline-run-*-{self.run.id}/run-{self.run.id}.wandb"):
                for rec in wandb_records(f):
                    if rec.WhichOneof("record_type") == "history":
                        items = rec.history.item
                        step = next(
                            (i.value_json for i in items if (i.key or "/".join(i.nested_key)) == "_step"),
                            None,
                        )
                        last = max(last, int(step)) if step is not None else last
            return last
        # Online, the run continues at W&B's own next step: one past what its server stored (0 for
        # a run it does not have, e.g. after run.wandb.project changed: everything is sent).
        return self.run.step - 1

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
