"""A run's trackers together: opened with the run ids from the checkpoint, fed the same rows, and
never sent an iteration twice across a crash and resume."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from marft.config import RunConfig
from marft.reporting.trackers.base import TRACKERS, RunInfo, Tracker, tracker_metrics, transcript_table


class TrackerError(RuntimeError):
    """A tracker could not open its run; the message names it and what to do."""


SENT = "loggers.json"
"""In the run directory: each tracker's run id and the last iteration it received."""


class TrackerSet:
    """The trackers of ``run.loggers`` for one session of a run.

    A resumed run redoes the iterations after its checkpoint; the trackers already received some
    of them before the crash. ``loggers.json`` records the last iteration each tracker received
    (rewritten atomically after every row), and those iterations are not sent again: each step
    reaches a tracker once, with the values it first received (exact resume makes them equal to
    the redone ones, except measured times and memory). A tracker that can say which steps it
    stored (all four can) is asked instead: a step sent in the background when the kill came may
    never have been stored; it is sent again (:meth:`catch_up` for those before the checkpoint).

    Args:
        run: the ``run`` config section (``loggers`` and each tracker's settings).
        info: the run's name, directory and resolved config.
        run_ids: tracker name -> run id, from the checkpoint being resumed (empty for a new run).
        roles: the team's roles (an agent's metric ``name/role`` is sent as ``role/name``).

    Raises:
        TrackerError: a tracker could not open its run (the message says which and how to fix it).
    """

    def __init__(self, run: RunConfig, info: RunInfo, run_ids: Mapping[str, str], roles: list[str]) -> None:
        self.path = info.run_dir / SENT
        self.roles = list(roles)
        sent = _read(self.path)
        self.trackers: dict[str, Tracker] = {}
        self.state: dict[str, dict[str, Any]] = {}
        self.resumed: set[str] = set()  # trackers that continue the checkpoint's run
        for name in run.loggers:
            tracker = TRACKERS.get(name).cls(run)
            run_id = run_ids.get(name)
            try:
                new_id = tracker.start(replace(info, run_id=run_id))
                resumed = run_id is not None and run_id == new_id
                stored = tracker.stored_through() if resumed else None
            except BaseException as e:
                with contextlib.suppress(Exception):  # what it opened before failing
                    tracker.finish("failed")
                self.close("killed" if isinstance(e, KeyboardInterrupt) else "failed")
                if not isinstance(e, Exception):
                    raise
                raise TrackerError(
                    f"logger {name} could not open its run ({type(e).__name__}: {e}); fix that "
                    f"(docs/runs.md) or drop {name} from run.loggers"
                ) from e
            self.trackers[name] = tracker
            step = -1
            if resumed:
                before = sent.get(name, {})
                recorded = before.get("step", -1) if before.get("id") == new_id else -1
                step = recorded if stored is None else stored
                self.resumed.add(name)
            self.state[name] = {"id": new_id, "step": step}
        self._write()

    @property
    def run_ids(self) -> dict[str, str]:
        """Tracker name -> its run id (saved in checkpoints)."""
        return {name: s["id"] for name, s in self.state.items()}

    def log(
        self, row: Mapping[str, Any], transcripts: list[dict[str, Any]], only: set[str] | None = None
    ) -> None:
        """Send one metrics row and its iteration's transcripts to every tracker (of ``only``)
        that has not received this iteration yet. A tracker that fails is warned about and
        dropped for the rest of the session (``metrics.jsonl`` keeps everything; a resume
        reopens it)."""
        if not self.trackers:
            return
        step = int(row["iteration"])
        metrics = tracker_metrics(row, self.roles)
        table = transcript_table(step, transcripts) if transcripts else None
        for name, tracker in list(self.trackers.items()):
            if step <= self.state[name]["step"] or (only is not None and name not in only):
                continue
            try:
                tracker.log(step, metrics, table)
            except Exception as e:
                self._drop(name, e)
                continue
            self.state[name]["step"] = step
            self._write()  # at once: a kill before the next tracker's turn leaves this one right

    def catch_up(self, rows: list[dict[str, Any]], transcripts: Mapping[int, list[dict[str, Any]]]) -> None:
        """On resume: send the rows before the checkpoint (from ``metrics.jsonl``) that a resumed
        tracker says it never stored; a killed session's last rows may have been on their way
        (W&B writes its offline file in 32 KiB blocks, Trackio every half second). A tracker
        added on resume starts at the checkpoint."""
        for row in rows:
            self.log(row, list(transcripts.get(row["iteration"], [])), only=self.resumed)

    def artifact(self, path: Path, kind: str) -> None:
        """Upload a file (the HTML report) to every tracker; a failed upload is only warned about."""
        for name, tracker in self.trackers.items():
            try:
                tracker.artifact(path, kind)
            except Exception as e:
                warnings.warn(
                    f"logger {name} did not take {path.name} ({e}); it is in {path.parent}", stacklevel=2
                )

    def close(self, status: str) -> None:
        """Close every tracker's run (``finished``, ``killed`` or ``failed``)."""
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.finish(status)
            except Exception as e:
                warnings.warn(f"logger {name} did not close cleanly: {e}", stacklevel=2)
        self.trackers.clear()

    def _drop(self, name: str, error: Exception) -> None:
        warnings.warn(
            f"logger {name} failed ({type(error).__name__}: {error}); it gets nothing more in this "
            "session. metrics.jsonl has every row; resume the run to reopen it",
            stacklevel=3,
        )
        tracker = self.trackers.pop(name)
        with contextlib.suppress(Exception):  # already broken: closing is best effort
            tracker.finish("failed")

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.path)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
