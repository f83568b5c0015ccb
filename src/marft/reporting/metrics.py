"""Where a run's numbers go: ``metrics.jsonl``, ``transcripts.jsonl`` and the trackers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from marft.reporting.trackers import TrackerSet

MEASURED = ("time", "memory_", "cuda_memory_", "torch_threads")
"""Prefixes of the metrics that are measurements of this machine (seconds, memory, the CPU threads
torch was given while other processes ran), not results."""


def reproducible(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without its measurements: what the same seed must give again."""
    return {k: v for k, v in row.items() if not k.startswith(MEASURED)}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "no value this iteration"
    return value


class MetricsSink:
    """Appends one JSON row per iteration to ``metrics.jsonl`` (and the kept episodes to
    ``transcripts.jsonl``), and sends both to the run's trackers (``run.loggers``).

    Args:
        run_dir: the run directory.
        start_iteration: when resuming, the checkpoint's iteration: rows (and transcripts) of later
            iterations, written before a crash, are dropped so the redone iterations are neither
            missing nor duplicated (trackers: see :class:`~marft.reporting.trackers.TrackerSet`).
        trackers: the run's trackers, already open (None: files only).
    """

    def __init__(self, run_dir: Path, start_iteration: int = 0, trackers: TrackerSet | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.transcripts_path = self.run_dir / "transcripts.jsonl"
        for path in (self.metrics_path, self.transcripts_path):
            _truncate(path, start_iteration)
        self.trackers = trackers

    @property
    def run_ids(self) -> dict[str, str]:
        """Tracker name -> its run id (what a checkpoint keeps so that a resume continues the run)."""
        return self.trackers.run_ids if self.trackers is not None else {}

    def rows_before(self, iteration: int) -> list[dict[str, Any]]:
        """The rows already logged for iterations before ``iteration``."""
        if not self.metrics_path.exists():
            return []
        return [r for r in read_metrics(self.run_dir) if r["iteration"] < iteration]

    def catch_up(self, rows: list[dict[str, Any]]) -> None:
        """On resume: the trackers get the rows before the checkpoint that they lost (see
        :meth:`~marft.reporting.trackers.TrackerSet.catch_up`)."""
        if self.trackers is None or not self.trackers.resumed or not rows:
            return
        kept: dict[int, list[dict[str, Any]]] = {}
        if self.transcripts_path.exists():
            for line in self.transcripts_path.read_text().splitlines():
                item = json.loads(line)
                kept.setdefault(item.pop("iteration"), []).append(item)
        self.trackers.catch_up(rows, kept)  # rows read from metrics.jsonl: already clean

    def log(self, row: dict[str, Any], transcripts: list[dict[str, Any]] | None = None) -> None:
        """One iteration: its metrics row and the episodes kept as transcripts."""
        row = {k: _clean(v) for k, v in row.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if transcripts:
            with self.transcripts_path.open("a") as f:
                for item in transcripts:
                    f.write(json.dumps({"iteration": row["iteration"], **item}, default=str) + "\n")
        if self.trackers is not None:
            self.trackers.log(row, transcripts or [])

    def artifact(self, path: Path, kind: str) -> None:
        """Upload a file of the run (``kind``: ``report``) to the trackers."""
        if self.trackers is not None:
            self.trackers.artifact(path, kind)

    def close(self, status: str = "finished") -> None:
        """Close the trackers' runs (``finished``, ``killed`` or ``failed``)."""
        if self.trackers is not None:
            self.trackers.close(status)


def _truncate(path: Path, iteration: int) -> None:
    """Keep only the JSON lines of iterations before ``iteration`` (a torn last line goes too);
    rewritten atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] < iteration:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    tmp.replace(path)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
