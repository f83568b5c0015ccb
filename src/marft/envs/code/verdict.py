"""One verdict per run, from the checker's reports and how the sandbox ended.

``passed`` needs the checker's ``done`` and every test of the task reported passed. Both come from
the checker alone (see :mod:`marft.envs.code.watch`); how the processes ended only ever turns a
run into a time-out, an out-of-memory or a kill.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import Enum

from marft.envs.code.limits import Limits


class Status(str, Enum):
    """What became of a program."""

    PASSED = "passed"
    """It loaded and every test passed."""
    FAILED = "failed"
    """It ran, but a test failed, it raised on load, or it exited before the tests ended."""
    TIMEOUT = "timeout"
    """It hit the wall-clock or the CPU-time limit."""
    OOM = "oom"
    """It ran out of its memory limit."""
    KILLED = "killed"
    """It died by a signal (a segfault), printed past the output limit, or the sandbox failed."""


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one :class:`~marft.envs.code.sandbox.Job`.

    Attributes:
        status: see :class:`Status`; it judges the task's tests alone.
        failures: per test of the task, ``""`` when it passed, else why not (bounded).
        detail: one line on the whole run ("2 of 3 tests passed", "timed out after 10 s").
        stdout, stderr: the first ``kept_chars`` of each.
        seconds: wall time of the run, the sandbox's start included.
        team_failures: per statement of the team's (``Job.team_tests``), the same; feedback only.
    """

    status: Status
    failures: tuple[str, ...]
    detail: str
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    team_failures: tuple[str, ...] = ()

    @property
    def passed(self) -> int:
        """Tests of the task that passed."""
        return sum(not f for f in self.failures)

    @property
    def fraction(self) -> float:
        """Share of the task's tests that passed (0 for a job without tests)."""
        return self.passed / len(self.failures) if self.failures else 0.0


@dataclass(frozen=True)
class Ending:
    """How a run ended, as the trainer saw it.

    Attributes:
        reports: the checker's reports, in order.
        returncode: the sandbox's exit status (bwrap and unshare exit with 128 + a signal).
        wrapped: whether the sandbox ran under bwrap or unshare.
        killed_for: ``timeout``, ``output`` or empty.
        stdout, stderr: what was kept of each.
        seconds: the run's wall time.
    """

    reports: list[list]
    returncode: int | None
    wrapped: bool
    killed_for: str
    stdout: str
    stderr: str
    seconds: float


def _signal_of(returncode: int | None, wrapped: bool) -> int | None:
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if wrapped and returncode > 128:
        return returncode - 128
    return None


def _outcomes(reports: list[list], n: int, n_team: int) -> tuple[list[str], list[str], str | None]:
    """Per test of the task, per team statement (``"not run"`` unless reported), and the load error."""
    outcomes = ["not run"] * (n + n_team)
    for e in reports:
        if e[0] == "test" and len(e) == 3 and type(e[1]) is int and 0 <= e[1] < n + n_team:
            outcomes[e[1]] = str(e[2])[:300]
    load = next((str(e[1]) for e in reports if e[0] == "load" and len(e) > 1), None)
    if load is not None:
        outcomes = [f"the program raised on load: {load}"] * (n + n_team)
    return outcomes[:n], outcomes[n:], load


def verdict(end: Ending, n: int, n_team: int, lim: Limits) -> ExecResult:
    """The :class:`ExecResult` of a run with ``n`` tests and ``n_team`` team statements."""
    failures, team, load = _outcomes(end.reports, n, n_team)
    kinds = {e[0] for e in end.reports}
    gone = next((e for e in end.reports if e[0] == "gone" and len(e) == 3), None)
    sig = _signal_of(end.returncode, end.wrapped)
    if sig is None and gone is not None and gone[1] == "signal" and type(gone[2]) is int:
        sig = gone[2]  # the program's process, which the checker saw die
    passed = sum(not f for f in failures)
    messages = [m for m in (load, *failures, *team, end.stderr[-300:]) if m]
    common = dict(failures=tuple(failures), team_failures=tuple(team))
    common.update(stdout=end.stdout, stderr=end.stderr, seconds=end.seconds)

    def result(status: Status, detail: str) -> ExecResult:
        return ExecResult(status, detail=detail, **common)

    if end.killed_for == "timeout" or sig == signal.SIGXCPU:
        what = f"{lim.wall_seconds:g} s wall" if end.killed_for else f"{lim.cpu_seconds} s of CPU"
        return result(Status.TIMEOUT, f"timed out ({what}) after {passed} of {n} tests passed")
    if end.killed_for == "output":
        return result(Status.KILLED, f"killed: printed more than {lim.output_bytes} bytes")
    error = next((str(e[1]) for e in end.reports if e[0] == "error" and len(e) > 1), None)
    if error is not None:
        return result(Status.KILLED, f"sandbox error: {error[:300]}")
    if any("MemoryError" in m for m in messages):
        return result(Status.OOM, f"out of memory ({lim.memory_mb} MB limit)")
    if "start" not in kinds:
        return result(Status.KILLED, f"the sandbox did not start: {end.stderr.strip()[-300:]}")
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return result(Status.KILLED, f"killed by {name}")
    if load is not None:
        return result(Status.FAILED, f"the program raised on load: {load}")
    if "done" in kinds and passed == n:
        return result(Status.PASSED, f"{passed} of {n} tests passed")
    why = ""
    if gone is not None:
        how = "exited" if gone[1] == "exit" else f"broke the protocol: {str(gone[2])[:100]}"
        why = f" (the program {how} before the tests ended)"
    elif "done" not in kinds:
        why = " (it exited before the tests ended)"
    return result(Status.FAILED, f"{passed} of {n} tests passed{why}")
