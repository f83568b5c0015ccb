"""Run untrusted Python programs against tests: isolated, limited, in parallel, never raising.

Each program runs in a fresh sandbox under `bubblewrap <https://github.com/containers/bubblewrap>`_
(``bwrap``): its own user, pid, network, IPC and mount namespaces, only the system folders and the
interpreter's own of the host's file system, read-only (no dataset file is in reach), a small
in-memory ``/tmp`` that is its working folder, an empty environment, and no capabilities. When
marft runs as root, the sandbox runs as an unprivileged user (``nobody``), so that the kernel
enforces the process-count limit (it never does for root).

Inside are two processes (:mod:`marft.envs.code.inside`): the *checker*, which holds the tests and
reports to the trainer, and the *program's process*, which it forks before reading the tests and
which loads the program and answers calls with plain data. The verdict is decided where the
program cannot reach: no expected value, no test and no report channel is ever in its process,
and the checker compares builtin values only. Both run under resource limits (CPU seconds, address
space, process count, open files, file size, no core dumps) set before any untrusted code runs.
From outside, the trainer kills the sandbox at the wall-clock limit or when it prints too much;
its pid namespace dies with it, and with it every process the program started.

Without ``bwrap`` the sandbox falls back to ``unshare`` (user, pid, network and mount namespaces,
the limits, an empty environment, but a writable file system) or, without working namespaces, to
the limits alone, and warns once, saying what is not isolated. The verdict's guarantee comes from
the split into two processes and holds under all three.

Example:
    >>> from marft.envs.code.sandbox import Job, Sandbox
    >>> box = Sandbox()
    >>> box.run(Job("def add(a, b):\\n    return a + b", ("assert add(1, 2) == 3",))).status
    <Status.PASSED: 'passed'>
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

from marft.envs.code.checks import check_plan, left_of_equality
from marft.envs.code.inside import BOOTSTRAP, compiled
from marft.envs.code.isolation import Setup, probe, spawn, warn_if_weak, work_dir, wrapper
from marft.envs.code.limits import Limits
from marft.envs.code.orphans import orphans_of
from marft.envs.code.verdict import Ending, ExecResult, Status, verdict
from marft.envs.code.watch import Watch, frames

__all__ = ["ExecResult", "Job", "Limits", "Sandbox", "Status"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A program and its tests, and which side of the sandbox holds each.

    The *program's process* holds ``program``, ``setup`` and ``team_tests``; the *checker* holds
    ``tests`` and ``checker`` and reports the verdict. The program never sees a test of the task.

    Attributes:
        program: the untrusted code to load (its top level runs once).
        tests: the task's statements (``assert f(1) == 2``), run one by one in the checker; a test
            passes when it raises nothing. The program's functions are stubs there: each call
            runs in the program's process, and only plain data comes back.
        setup: code run in the program's process after the program, before the tests (MBPP's
            ``test_setup_code``, which builds inputs with the program's own classes). It must not
            hold expected values: the program can read it.
        entry_point: the function the task asks for. It is taken from the program even when its
            name is a builtin's (mbpp/126 defines ``sum``), and ``candidate`` names it too
            (HumanEval's convention). Every other name the tests use comes from the program only
            when it is neither a builtin nor defined by ``checker``.
        checker: code the checker runs before the tests: definitions they use that the program
            must not be able to replace (HumanEval's ``check`` and its prompt's helpers).
        team_tests: statements written by the team (a tester's asserts). They run in the program's
            process, so their outcome is the program's own word: feedback, never the verdict.
    """

    program: str
    tests: tuple[str, ...]
    setup: str = ""
    entry_point: str = ""
    checker: str = ""
    team_tests: tuple[str, ...] = ()


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
        # What a killed sandbox leaves (without a pid namespace, the program's children; under
        # bubblewrap, its namespace init) is re-parented; a container's pid 1 may never reap it, and
        # the zombies would use up the sandbox user's process limit (marft.envs.code.orphans).
        uid = self.setup.uid
        self._orphans = orphans_of(uid) if uid is not None and uid != os.getuid() else None
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
            not_run = ("not run",) * len(job.tests)
            team = ("not run",) * len(job.team_tests)
            return ExecResult(Status.KILLED, not_run, f"sandbox error: {e}", team_failures=team)
        finally:
            self._slots.put(slot)

    def map(self, jobs: list[Job]) -> list[ExecResult]:
        """Run jobs in parallel (``workers`` at once); results in the jobs' order."""
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
            return list(pool.map(self.run, jobs))

    def _command(self, fd: int) -> list[str]:
        return [
            *wrapper(self.setup.isolation, self.limits.workdir_mb, self.setup.prefixes),
            self.setup.python,
            "-I",
            "-c",
            BOOTSTRAP,
            str(fd),
        ]

    def _spawn(self, fd: int, cwd: str) -> subprocess.Popen:
        if self._orphans is None:
            return spawn(self._command(fd), self.setup.uid, (fd,), cwd)
        self._orphans.sweep()
        with self._orphans.starting():
            proc = spawn(self._command(fd), self.setup.uid, (fd,), cwd)
            self._orphans.started(proc.pid)
        return proc

    def _run(self, job: Job) -> ExecResult:
        lim = self.limits
        # + the checker, the program's process and the namespace's first process (bwrap's init,
        # or unshare itself); without namespaces the kernel counts all the user's processes, so
        # every sandbox running at once counts.
        nproc = (lim.processes + 3) * (self.workers if self.setup.isolation == "none" else 1)
        rlimits = {
            "RLIMIT_CPU": lim.cpu_seconds,
            "RLIMIT_AS": lim.memory_mb * 2**20,
            "RLIMIT_NPROC": nproc,
            "RLIMIT_NOFILE": lim.open_files,
            "RLIMIT_FSIZE": lim.file_size_mb * 2**20,
            "RLIMIT_CORE": 0,
        }
        plan = check_plan(job.tests, job.checker, job.entry_point)
        first = {"limits": rlimits, "imports": plan.imports, "program": job.program, "setup": job.setup}
        second = {
            "tests": job.tests,
            "checker": job.checker,
            "entry_point": job.entry_point,
            "names": plan.names,
            "imports": plan.imports,
            "got": plan.got,
            "team_tests": job.team_tests,
            "team_got": [left_of_equality(t) for t in job.team_tests],
        }
        ours, theirs = socket.socketpair()
        t0 = time.perf_counter()
        with work_dir(self.setup.uid) as tmp, ours:
            try:
                proc = self._spawn(theirs.fileno(), tmp)
            finally:
                theirs.close()
            payload = compiled(self.setup.python) + frames(first, second)
            run = Watch(proc, ours, payload, lim.output_bytes, lim.kept_chars * 4)
            try:
                run.wait(t0 + lim.wall_seconds)
            finally:
                if self._orphans is not None:
                    self._orphans.finished(proc.pid)
        end = Ending(
            reports=run.reports(),
            returncode=proc.returncode,
            wrapped=self.setup.isolation != "none",
            killed_for=run.killed_for,
            stdout=run.out["stdout"].decode("utf-8", "replace")[: lim.kept_chars],
            stderr=run.out["stderr"].decode("utf-8", "replace")[: lim.kept_chars],
            seconds=time.perf_counter() - t0,
        )
        _note_dumpable(end.reports)
        return verdict(end, len(job.tests), len(job.team_tests), lim)


@lru_cache(maxsize=1)
def _warn_dumpable() -> None:
    log.warning(
        "The sandbox's checker could not make itself non-dumpable (prctl): on this host a program "
        "could ptrace the checker and forge its verdict. Run marft on Linux with a C library."
    )


def _note_dumpable(reports: list[list]) -> None:
    start = next((e for e in reports if e[0] == "start"), None)
    if start is not None and start[1:] == [False]:
        _warn_dumpable()
