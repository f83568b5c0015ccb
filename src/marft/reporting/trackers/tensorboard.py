"""TensorBoard: scalars as event files under ``run_dir/tensorboard``, the transcripts as text."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from marft.reporting.trackers.base import TRACKERS, RunInfo, Tracker, TrackerSpec, TranscriptTable


class TensorBoardTracker(Tracker):
    """Event files under ``run_dir/tensorboard`` (``tensorboard --logdir runs/``). Its run id is
    that folder; a resumed run appends new event files there."""

    def start(self, info: RunInfo) -> str:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = info.run_dir / "tensorboard"
        self._stored = _last_step(self.log_dir) if info.run_id is not None else None
        # TensorBoard readers drop the points of earlier sessions at and after ``purge_step``: a
        # step a kill cut halfway (resent whole), or, for a run resumed from a checkpoint without
        # tracker ids (an older marft), what the crashed session wrote after the checkpoint.
        purge = self._stored + 1 if self._stored is not None else (info.start_iteration or None)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        self.writer.add_text("config", _code_block(info.config), info.start_iteration)
        return self.log_dir.name  # its folder in the run directory (which may move)

    def stored_through(self) -> int | None:
        return self._stored

    def log(self, step: int, metrics: Mapping[str, float], table: TranscriptTable | None) -> None:
        for key, value in metrics.items():
            if key != MARKER:
                self.writer.add_scalar(key, value, step)
        if table is not None and table.rows:
            head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
            body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in table.rows)
            self.writer.add_text("transcripts", head + body, step)
        self.writer.add_scalar(MARKER, step, step)  # last: the step is whole once this is there
        self.writer.flush()

    def artifact(self, path: Path, kind: str) -> None:
        """TensorBoard keeps no files: the report stays in the run directory."""

    def finish(self, status: str) -> None:
        self.writer.flush()
        self.writer.close()


MARKER = "iteration"
"""The scalar written last for each step: a step whose marker is in the files is whole."""


def _last_step(log_dir: Path) -> int:
    """The last whole step in the event files of earlier sessions (-1: none)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    last = -1
    for f in log_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(f)).Load():  # stops at a record cut by a kill
            if any(v.tag == MARKER for v in event.summary.value):
                last = max(last, event.step)
    return last


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", "<br>")


def _code_block(config: Mapping) -> str:
    import yaml

    return "    " + yaml.safe_dump(dict(config), sort_keys=False).replace("\n", "\n    ")


TRACKERS.register("tensorboard")(TrackerSpec(TensorBoardTracker, module="tensorboard", extra=None))
