"""The sandbox's first process, which becomes the checker: ``python -I -c SOURCE FD``.

``FD`` is its end of a socket to the trainer; nothing else of the trainer's is open in it.

1. It reads the first frame (the limits, the modules the tests use, the program and the setup),
   makes itself non-dumpable (then no other process of its user may ptrace it, read its memory or
   open its ``/proc`` files), imports those modules, lowers its resource limits and reports
   ``["start", non-dumpable]``.
2. It forks the program's process, which closes every descriptor but its two pipes and runs
   :func:`serve` (the limits hold for it and for all it starts).
3. Only then does it read the second frame (the tests, the checker's own code, the entry point),
   so the program's process never had them in its memory, and runs :func:`check`.
4. It reports, one JSON line each on the socket: ``["load", message]`` when the program raised
   while loading, ``["test", i, message]`` after test ``i`` (message empty when it passed),
   ``["gone", how, detail]`` when the program's process ended before the tests did, ``["done"]``
   after the last test, ``["error", message]`` when it could not start the program's process;
   then it ends the program's process.

Runs inside the sandbox (see :mod:`marft.envs.code.inside`): the standard library only.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

from marft.envs.code.inside.checker import Program, check
from marft.envs.code.inside.solution import serve
from marft.envs.code.inside.wire import receive

JOB_BYTES = 1 << 30
"""Frames from the trainer (trusted): no real bound."""
FORK_TRIES = 20


def _limit(limits: dict) -> None:
    for name, value in limits.items():
        soft, hard = (value, value + 1) if name == "RLIMIT_CPU" else (value, value)
        resource.setrlimit(getattr(resource, name), (soft, hard))


def _undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``; False where it failed."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0
    except Exception:  # noqa: BLE001 (no libc prctl: reported, not fatal)
        return False


def _keep_only(keep: tuple[int, ...]) -> None:
    """Close every descriptor above 2 but ``keep``."""
    top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    start = 3
    for fd in sorted(keep):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, max(start, top))


def _reporter(fd: int):
    def report(*fields) -> None:
        view = memoryview((json.dumps(list(fields)) + "\n").encode())
        while view:
            view = view[os.write(fd, view) :]

    return report


def _fork(report) -> int:
    """``os.fork()``, tried for up to a second when the process limit is reached: without namespaces
    the limit counts every process of the sandbox user, other sandboxes' exiting ones included."""
    for _ in range(FORK_TRIES - 1):
        try:
            return os.fork()
        except BlockingIOError:
            time.sleep(0.05)
    try:
        return os.fork()
    except OSError as e:
        report("error", f"could not start the program's process: {e}")
        os._exit(0)


def main() -> None:
    fd = int(sys.argv[1])
    first = receive(fd, JOB_BYTES)
    undumpable = _undumpable()
    if getattr(sys, "set_int_max_str_digits", None) is not None:  # Python 3.11+
        sys.set_int_max_str_digits(0)
    for name in first["imports"]:
        try:  # noqa: SIM105 (contextlib is one more import at every start)
            __import__(name)
        except Exception:  # noqa: BLE001 (a test that needs it fails by itself)
            pass
    _limit(first["limits"])
    report = _reporter(fd)
    report("start", undumpable)
    to_program, requests = os.pipe()
    replies, from_program = os.pipe()
    pid = _fork(report)
    if pid == 0:  # the program's process
        _keep_only((to_program, from_program))
        serve(first["program"], first["setup"], to_program, from_program)
    os.close(to_program)
    os.close(from_program)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # no KeyboardInterrupt sent into a test
    program = Program(pid, requests, replies)
    check(receive(fd, JOB_BYTES), program, report)
    if program.end_event is not None:
        report(*program.end_event)
    else:
        report("done")
        os.kill(pid, signal.SIGKILL)
    os._exit(0)


if __name__ == "__main__":
    main()
