"""Where a run's numbers go besides ``metrics.jsonl``: ``run.loggers`` and each logger's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from marft.config.errors import _check

LoggerName = Literal["tensorboard", "wandb", "mlflow", "trackio"]
"""The experiment trackers a run can log to (``run.loggers``)."""


@dataclass
class WandbConfig:
    """Weights & Biases (``run.loggers: [wandb]``, ``pip install 'marft[wandb]'``)."""

    project: str = "marft"
    """The W&B project the run goes to."""
    entity: str | None = None
    """The W&B user or team (null: the API key's default entity, or ``WANDB_ENTITY``)."""
    mode: Literal["online", "offline", "disabled"] | None = None
    """``offline`` writes the run under the run directory's ``wandb/`` for ``wandb sync`` later
    (null: ``WANDB_MODE``, else online)."""
    group: str | None = None
    """Groups runs in the W&B UI (e.g. one group per sweep)."""
    tags: list[str] = field(default_factory=list)
    """Tags of the run."""


@dataclass
class MlflowConfig:
    """MLflow (``run.loggers: [mlflow]``, ``pip install 'marft[mlflow]'``)."""

    tracking_uri: str | None = None
    """Where MLflow stores runs (null: ``MLFLOW_TRACKING_URI``, else ``sqlite:///`` a file
    ``mlflow.db`` beside the run directory, so that every run under ``runs/`` shares one store)."""
    experiment: str = "marft"
    """The MLflow experiment (created if missing)."""


@dataclass
class TrackioConfig:
    """Trackio (``run.loggers: [trackio]``, ``pip install 'marft[trackio]'``): local-first."""

    project: str = "marft"
    """The Trackio project (a local SQLite database under ``TRACKIO_DIR``, or a Space)."""
    space_id: str | None = None
    """Log to this Hugging Face Space instead of the local database (null: ``TRACKIO_SPACE_ID``,
    else local)."""
    group: str | None = None
    """Groups runs in the Trackio dashboard."""


def check_logger_names(names: list[str]) -> None:
    """Refuse a logger named twice (``run.loggers``)."""
    twice = sorted({n for n in names if names.count(n) > 1})
    _check(not twice, "loggers", f"names {', '.join(twice)} more than once")
