"""Experiment trackers (``run.loggers``): TensorBoard, Weights & Biases, MLflow, Trackio.

Each receives the same content: every metrics row (an agent's metrics under its role), the
resolved config, a transcripts table per iteration and the HTML report at the end. See
``docs/runs.md``.
"""

from marft.reporting.trackers import mlflow_tracker, tensorboard, trackio_tracker, wandb_tracker  # noqa: F401
from marft.reporting.trackers.base import (
    TRACKERS,
    TRANSCRIPT_COLUMNS,
    RunInfo,
    Tracker,
    TranscriptTable,
    check_trackers,
    flat_params,
    tracker_metrics,
    transcript_table,
)
from marft.reporting.trackers.fanout import SENT, TrackerError, TrackerSet

__all__ = [
    "SENT",
    "TRACKERS",
    "TRANSCRIPT_COLUMNS",
    "RunInfo",
    "Tracker",
    "TrackerError",
    "TrackerSet",
    "TranscriptTable",
    "check_trackers",
    "flat_params",
    "tracker_metrics",
    "transcript_table",
]
