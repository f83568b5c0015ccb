"""Run untrusted Python programs against tests: isolated, limited, in parallel, never raising.

Each program runs in a fresh process under `bubblewrap <https://github.com/containers/bubblewrap>`_
(``bwrap``): its own user, pid, network, IPC and mount namespaces, the whole file system read-only
except a small in-memory ``/tmp`` that is its working folder, an empty environment, and no
capabilities. When marft runs as root, the sandbox runs as an unprivileged user (``nobody``), so
that the kernel enforces the process-count limit (it never does for root). Inside, the harness
(:mod:`marft.envs.code.harness`) lowers the resource limits (CPU seconds, address space, process
count, open files, file size, no core dumps) before any untrusted code runs. From outside, the
parent kills the sandbox at the wall-clock limit or when it prints too much; its pid namespace
dies with it, and with it every process the program started.

Without ``bwrap`` the sandbox falls back to ``unshare`` (user, pid, network and mount namespaces,
the limits, an empty environment, but a writable file system) or, without working namespaces, to
the limits alone, and warns once, saying what is not isolated.

Example:
    >>> from marft.envs.code.sandbox import Job, Sandbox
    >>> box = Sandbox()
    >>> box.run(Job("def add(a, b):\\n    return a + b", ("assert add(1, 2) == 3",))).status
    <Status.PASSED: 'passed'>
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import selectors
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from marft.envs.code.isolation import Setup, probe, spawn, warn_if_weak, work_dir, wrapper

log = logging.getLogger(__name__)
_HARNESS = (Path(__file__).parent / "harness.py").read_text()
_KILL_GRACE_S = 5.0
"""How long to wait for a killed sandbox to be reaped before giving up on it."""
_POLL_S = 0.5
"""How often a waiting sandbox is checked for having exited."""
_DRAIN_S = 0.5
"""How long pipes are read after the program exited (a child it left may hold them open)."""


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
class Limits:
    """What one program may use (``env.kwargs.sandbox`` of the code env)."""

    wall_seconds: float = 10.0
    """Killed after this long, whatever it is doing (sleeping included)."""
    cpu_seconds: int = 10
    """CPU time (all its threads); then killed by the kernel."""
    memory_mb: int = 1024
    """Address space of each of its processes."""
    processes: int = 16
    """Processes and threads it may have at once (a fork bomb stops here)."""
    open_files: int = 64
    """Open file descriptors per process."""
    file_size_mb: int = 16
    """Largest file it may write."""
    workdir_mb: int = 64
    """Size of its in-memory working folder (bubblewrap only)."""
    output_bytes: int = 1_000_000
    """Killed once stdout and stderr together pass this many bytes."""
    kept_chars: int = 2000
    """Characters of stdout and of stderr kept in the result."""

    def __post_init__(self) -> None:
        from marft.config import ConfigError

        for name in ("wall_seconds", "cpu_seconds", "memory_mb", "processes", "open_files", "output_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")


@dataclass(frozen=True)
class Job:
    """A program and its tests.

    Attributes:
        program: the code to load (its top level runs once).
        tests: statements run one by one in the program's namespace (``assert f(1) == 2``); a test
            passes when it raises nothing.
        setup: code run after the program, before the tests (MBPP's ``test_setup_code``).
    """

    program: str
    tests: tuple[str, ...]
    setup: str = ""


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one :class:`Job`.

    Attributes:
        status: see :class:`Status`.
        failures: per test, ``""`` when it passed, else why not (bounded).
        detail: one line on the whole run ("2 of 3 tests passed", "timed out after 10 s").
        stdout, stderr: the first ``kept_chars`` of each.
        seconds: wall time of the run, the sandbox's start included.
    """

    status: Status
    failures: tuple[str, ...]
    detail: str
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        """Tests that passed."""
        return sum(not f for f in self.failures)

    @property
    def fraction(self) -> float:
        """Share of tests that passed (0 for a job without tests)."""
        return self.passed / len(self.failures) if self.failures else 0.0


class Sandbox:
    """Runs :class:`Job` s in isolated processes, at most ``workers`` at once.

    Thread-safe: many threads may call :meth:`run` together (the code env steps its copies that
    way); each waits for a free slot. :meth:`run` never raises for anything the program does.

    Args:
        limits: see :class:`Limits`.
        isolation: ``auto`` (the strongest that works: bwrap, then unshare, then none) or one of them.
        workers: programs at once; 0 means one per CPU core this process may use.
        python: the interpreter that runs the programs (``auto``: see :func:`probe`).
    """

    def __init__(
        self, limits: Limits | None = None, isolation: str = "auto", workers: int = 0, python: str = "auto"
    ) -> None:
        self.limits = limits or Limits()
        self.setup: Setup = probe(isolation, python)
        warn_if_weak(self.setup)
        self.workers = workers or len(os.sched_getaffinity(0))
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)

    def run(self, job: Job) -> ExecResult:
        """Run one job (waits for a free slot)."""
        slot = self._slots.get()
        try:
            return self._run(job)
        except Exception as e:  # noqa: BLE001 (a sandbox that cannot start must not stop training)
            log.warning("sandbox failed: %s", e)
            return ExecResult(Status.KILLED, ("not run",) * len(job.tests), f"sandbox error: {e}")
        finally:
            self._slots.put(slot)

    def map(self, jobs: list[Job]) -> list[ExecResult]:
        """Run jobs in parallel (``workers`` at once); results in the jobs' order."""
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
            return list(pool.map(self.run, jobs))

    def _command(self) -> list[str]:
        return [
            *wrapper(self.setup.isolation, self.limits.workdir_mb),
            self.setup.python,
            "-I",
            "-c",
            _HARNESS,
        ]

    def _run(self, job: Job) -> ExecResult:
        lim, tag = self.limits, secrets.token_hex(16)
        rlimits = {
            "RLIMIT_CPU": lim.cpu_seconds,
            "RLIMIT_AS": lim.memory_mb * 2**20,
            # + the harness and the namespace's first process (bwrap's init, or unshare itself)
            "RLIMIT_NPROC": lim.processes + 2,
            "RLIMIT_NOFILE": lim.open_files,
            "RLIMIT_FSIZE": lim.file_size_mb * 2**20,
            "RLIMIT_CORE": 0,
        }
        read_fd, write_fd = os.pipe()
        payload = {"program": job.program, "setup": job.setup, "tests": list(job.tests)}
        payload.update(fd=write_fd, tag=tag, limits=rlimits)
        t0 = time.perf_counter()
        with work_dir(self.setup.uid) as tmp:
            try:
                proc = spawn(self._command(), self.setup.uid, (write_fd,), tmp)
            finally:
                os.close(write_fd)
            run = _Watch(proc, read_fd, json.dumps(payload).encode(), lim)
            run.wait(t0 + lim.wall_seconds)
        wrapped = self.setup.isolation != "none"
        return _verdict(run, tag, len(job.tests), lim, time.perf_counter() - t0, wrapped)


@dataclass
class _Watch:
    """Feeds a sandbox its job and reads its three pipes until it ends or must be killed."""

    proc: subprocess.Popen
    result_fd: int
    payload: bytes
    limits: Limits
    out: dict[str, bytearray] = field(
        default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray(), "result": bytearray()}
    )
    printed: int = 0
    sent: int = 0
    killed_for: str = ""

    def wait(self, deadline: float) -> None:
        sel = selectors.DefaultSelector()
        proc = self.proc
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(self.result_fd, selectors.EVENT_READ, "result")
        try:
            while sel.get_map() and not self.killed_for:
                if proc.poll() is not None:
                    # Exited: a child it left behind (without a pid namespace) may hold the
                    # pipes open; read what is there, then stop waiting for them.
                    deadline = min(deadline, time.perf_counter() + _DRAIN_S)
                    if time.perf_counter() >= deadline:
                        break
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.killed_for = "timeout"
                    break
                for key, _ in sel.select(timeout=min(left, _POLL_S)):
                    if key.data == "stdin":
                        self._feed(sel)
                    else:
                        self._read(sel, key)
            if not self.killed_for:  # its pipes are closed, but it may still run
                try:
                    proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
                except subprocess.TimeoutExpired:
                    self.killed_for = "timeout"
        finally:
            sel.close()
            self._finish()

    def _feed(self, sel: selectors.BaseSelector) -> None:
        stdin = self.proc.stdin
        try:
            self.sent += os.write(stdin.fileno(), self.payload[self.sent : self.sent + 65536])
        except BlockingIOError:
            return
        except OSError:  # the sandbox died before reading its job
            self.sent = len(self.payload)
        if self.sent >= len(self.payload):
            sel.unregister(stdin)
            stdin.close()

    def _read(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        chunk = os.read(key.fd, 65536)
        if not chunk:
            sel.unregister(key.fileobj)
            return
        self._keep(key.data, chunk)
        if self.printed > self.limits.output_bytes:
            self.killed_for = "output"

    def _keep(self, name: str, chunk: bytes) -> None:
        if name == "result":
            if len(self.out["result"]) < 4 * 2**20:  # a forged flood is dropped, not kept
                self.out["result"] += chunk
            return
        self.printed += len(chunk)
        room = self.limits.kept_chars * 4 - len(self.out[name])  # bytes: up to 4 per character
        if room > 0:
            self.out[name] += chunk[:room]

    def _finish(self) -> None:
        proc = self.proc
        # Always: without a pid namespace, children it left behind live in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap dies, and its pid namespace with it
        try:
            proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("sandbox process %d did not exit after SIGKILL", proc.pid)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()
        os.close(self.result_fd)


def _events(raw: bytes, tag: str) -> list[list]:
    out = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, list) and event and event[0] == tag:
            out.append(event[1:])
    return out


def _signal_of(returncode: int | None, wrapped: bool) -> int | None:
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if wrapped and returncode > 128:  # bwrap and unshare exit with 128 + the signal
        return returncode - 128
    return None


def _verdict(run: _Watch, tag: str, n_tests: int, lim: Limits, seconds: float, wrapped: bool) -> ExecResult:
    events = _events(bytes(run.out["result"]), tag)
    stdout = run.out["stdout"].decode("utf-8", "replace")[: lim.kept_chars]
    stderr = run.out["stderr"].decode("utf-8", "replace")[: lim.kept_chars]
    started = any(e[0] == "start" for e in events)
    done = any(e[0] == "done" for e in events)
    load = next((e[1] for e in events if e[0] == "load" and len(e) > 1), None)
    failures = ["not run"] * n_tests
    for e in events:
        if e[0] == "test" and len(e) == 3 and isinstance(e[1], int) and 0 <= e[1] < n_tests:
            failures[e[1]] = str(e[2])[:300]
    if load is not None:
        failures = [f"the program raised on load: {load}"] * n_tests
    messages = [m for m in (load, *failures, stderr[-300:]) if m]
    sig = _signal_of(run.proc.returncode, wrapped)
    passed = sum(not f for f in failures)
    result = dict(failures=tuple(failures), stdout=stdout, stderr=stderr, seconds=seconds)
    if run.killed_for == "timeout" or sig == signal.SIGXCPU:
        what = f"{lim.wall_seconds:g} s wall" if run.killed_for else f"{lim.cpu_seconds} s of CPU"
        return ExecResult(
            Status.TIMEOUT, detail=f"timed out ({what}) after {passed} of {n_tests} tests passed", **result
        )
    if run.killed_for == "output":
        return ExecResult(
            Status.KILLED, detail=f"killed: printed more than {lim.output_bytes} bytes", **result
        )
    if any("MemoryError" in m for m in messages):
        return ExecResult(Status.OOM, detail=f"out of memory ({lim.memory_mb} MB limit)", **result)
    if not started:
        return ExecResult(
            Status.KILLED, detail=f"the sandbox did not start: {stderr.strip()[-300:]}", **result
        )
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return ExecResult(Status.KILLED, detail=f"killed by {name}", **result)
    if done and passed == n_tests:
        return ExecResult(Status.PASSED, detail=f"{passed} of {n_tests} tests passed", **result)
    if load is not None:
        return ExecResult(Status.FAILED, detail=f"the program raised on load: {load}", **result)
    why = "" if done else " (it exited before the tests ended)"
    return ExecResult(Status.FAILED, detail=f"{passed} of {n_tests} tests passed{why}", **result)
