"""What every experiment tracker receives, in one shape: metrics per step, a transcripts table, the
config, the report. A tracker is a small adapter over one library (:class:`Tracker`)."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marft.config import ConfigError, RunConfig
from marft.registry import Registry

NOT_PER_AGENT = frozenset({"route_share"})
"""Metric families ``name/x`` whose ``x`` is not a role even when it spells one (a route of one
agent: ``route_share/lead``)."""

TRANSCRIPT_COLUMNS = (
    "iteration",
    "env",
    "step",
    "agent",
    "prompt",
    "response",
    "reward",
    "team_reward",
    "episode_return",
)
"""The columns of the transcripts table: one row per agent action of a kept episode; ``reward`` is
what that action received (``env.reward_assignment``), ``team_reward`` the step's team reward."""


@dataclass
class TranscriptTable:
    """The transcripts of one iteration as rows of :data:`TRANSCRIPT_COLUMNS`."""

    rows: list[list[Any]] = field(default_factory=list)
    columns: tuple[str, ...] = TRANSCRIPT_COLUMNS


@dataclass
class RunInfo:
    """What a tracker needs to open (or reopen) a run.

    Attributes:
        name: the run's display name.
        run_dir: the run directory (trackers that write files put them under it when they can).
        config: the resolved config (nested plain data, as in ``config.yaml``).
        run_id: the tracker's id of this run from the checkpoint, when resuming; None starts a run.
        start_iteration: the iteration this session starts at (the checkpoint's).
    """

    name: str
    run_dir: Path
    config: dict[str, Any]
    run_id: str | None = None
    start_iteration: int = 0


class Tracker:
    """One experiment tracker. ``start`` opens the run and returns its id (stored in checkpoints, so
    that a resume continues the same run); ``log`` sends one iteration; ``artifact`` uploads a
    file; ``finish`` closes the run with ``status`` ``finished``, ``killed`` or ``failed``.

    Args:
        run: the ``run`` config section (each tracker reads its own settings there).
    """

    def __init__(self, run: RunConfig) -> None:
        self.run_cfg = run

    def start(self, info: RunInfo) -> str:
        raise NotImplementedError

    def stored_through(self) -> int | None:
        """After ``start`` of a resumed run: the last step the tracker itself says it stored, when
        it can say (a tracker that sends in the background may have lost the steps a kill caught
        on their way); None: unknown, the set's own record decides."""
        return None

    def log(self, step: int, metrics: Mapping[str, float], table: TranscriptTable | None) -> None:
        raise NotImplementedError

    def artifact(self, path: Path, kind: str) -> None:
        raise NotImplementedError

    def finish(self, status: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class TrackerSpec:
    """A tracker's class, the module it needs and the extra that installs it."""

    cls: type[Tracker]
    module: str
    extra: str | None


TRACKERS: Registry[TrackerSpec] = Registry("logger")


def check_trackers(names: list[str]) -> None:
    """Every tracker in ``run.loggers`` is known and installed; checked before anything loads.

    Raises:
        ConfigError: ``run.loggers``, with the install command of a missing one.
    """
    for name in names:
        if name not in TRACKERS:
            raise ConfigError("run.loggers", f"unknown logger {name!r}; choose from {', '.join(TRACKERS)}")
        spec = TRACKERS.get(name)
        if importlib.util.find_spec(spec.module) is None:
            install = f"'marft[{spec.extra}]'" if spec.extra else spec.module
            raise ConfigError(
                "run.loggers", f"{name} is not installed: pip install {install} (or drop it from run.loggers)"
            )


def tracker_metrics(row: Mapping[str, Any], roles: list[str]) -> dict[str, float]:
    """A metrics row as trackers get it: numbers only (no nulls, no NaN), and an agent's metric
    ``name/role`` as ``role/name``, so that each agent's metrics sit together under its role.

    Example:
        >>> tracker_metrics({"iteration": 3, "policy_loss/writer": 0.5, "x": None}, ["writer"])
        {'iteration': 3.0, 'writer/policy_loss': 0.5}
    """
    out = {}
    for key, value in row.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        name, _, role = key.rpartition("/")
        mine = name and role in roles and name not in NOT_PER_AGENT
        out[f"{role}/{name}" if mine else key] = float(value)
    return out


def transcript_table(iteration: int, items: list[dict[str, Any]]) -> TranscriptTable:
    """One row per agent action of the kept episodes (``transcripts.jsonl`` items)."""
    rows = []
    for item in items:
        for turn in item.get("turns", []):
            for agent in turn["agents"]:
                prompt = "\n\n".join(f"{m['role']}: {m['content']}" for m in agent["messages"])
                rows.append(
                    [
                        iteration,
                        item.get("env"),
                        turn.get("step"),
                        agent["role"],
                        prompt,
                        agent["response"],
                        agent.get("reward"),
                        turn.get("reward"),
                        item.get("episode_return"),
                    ]
                )
    return TranscriptTable(rows)


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``dotted.key -> text`` (trackers whose parameters are flat strings).

    Example:
        >>> flat_params({"run": {"seed": 0, "loggers": ["wandb"]}})
        {'run.seed': '0', 'run.loggers': '["wandb"]'}
    """
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            out.update(flat_params({str(i): v for i, v in enumerate(value)}, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out
