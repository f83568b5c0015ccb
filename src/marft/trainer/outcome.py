"""How a run ends: its result, or the exception that stops it early."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TrainingStopped(RuntimeError):
    """The run stopped early: a signal, or too many faults. ``checkpoint`` is where its work is."""

    def __init__(self, message: str, checkpoint: Path | None, exit_code: int) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.exit_code = exit_code


@dataclass
class TrainResult:
    """What a finished run returns: where it lives and its metric rows."""

    run_dir: Path
    rows: list[dict[str, Any]]
    checkpoint: Path
    report: Path | None = None
