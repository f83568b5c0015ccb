"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard, ``transcripts.jsonl``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MEASURED = ("time", "memory_", "cuda_memory_")
"""Prefixes of the metrics that are measurements of this machine (seconds, memory), not results."""


def reproducible(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without its measurements: what the same seed must give again."""
    return {k: v for k, v in row.items() if not k.startswith(MEASURED)}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "no value this iteration"
    return value


class MetricsSink:
    """Appends one JSON row per iteration and mirrors scalars to TensorBoard.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard event files under ``run_dir/tensorboard``.
        start_iteration: when resuming, the checkpoint's iteration: rows (and transcripts and
            TensorBoard points) of later iterations, written before a crash, are dropped so the
            redone iterations are neither missing nor duplicated.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, start_iteration: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.transcripts_path = self.run_dir / "transcripts.jsonl"
        for path in (self.metrics_path, self.transcripts_path):
            _truncate(path, start_iteration)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(self.run_dir / "tensorboard"), purge_step=start_iteration or None
            )

    def rows_before(self, iteration: int) -> list[dict[str, Any]]:
        """The rows already logged for iterations before ``iteration``."""
        if not self.metrics_path.exists():
            return []
        return [r for r in read_metrics(self.run_dir) if r["iteration"] < iteration]

    def log(self, row: dict[str, Any]) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self._tb is not None:
            step = row["iteration"]
            for k, v in row.items():
                if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def transcripts(self, iteration: int, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        with self.transcripts_path.open("a") as f:
            for item in items:
                f.write(json.dumps({"iteration": iteration, **item}, default=str) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


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
