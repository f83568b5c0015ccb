"""Reap what a sandbox without namespaces leaves behind.

Under bubblewrap or ``unshare`` a sandbox has a pid namespace: when it is killed, its init reaps
every process the program started. Without namespaces (isolation ``none``), killing the sandbox's
process group kills the program's children too, but their parents die with them, so they are
re-parented to the host's pid 1, and a container's pid 1 often never waits for them. They stay as
zombies of the sandbox user, and zombies count against its process limit: after a fork bomb or two,
no sandbox can start its program's process any more (``fork: Resource temporarily unavailable``).

:func:`orphans_of` makes the trainer's process their *child subreaper* (``PR_SET_CHILD_SUBREAPER``):
orphans of its descendants come to it instead of to pid 1, and it reaps those of the sandbox user
before and after every run. It never waits for a sandbox that is running (those are ``subprocess``
children, waited for by their ``Popen``), nor for any other user's process. Once this process is a
subreaper, bubblewrap's namespace init, left when a sandbox is killed, comes to it too; so every
sandbox of a root trainer (which runs programs as ``nobody``) registers with the one
:class:`Orphans` of its user, whatever its isolation.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import signal
import threading
import time
from functools import cache, lru_cache

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
"""``prctl`` option (Linux 3.4+): orphaned descendants are re-parented to this process."""
REAP_S = 1.0
"""How long a sweep waits for a child it killed to die."""


@lru_cache(maxsize=1)
def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (once); False where that fails."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.warning(
            "The code sandbox could not make the trainer a child subreaper (prctl): without "
            "namespaces, processes a program leaves behind may stay as zombies and use up the "
            "sandbox user's process limit. Install bubblewrap (apt-get install bubblewrap)."
        )
    return ok


def _children() -> set[int]:
    """This process's children, of all its threads."""
    out: set[int] = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with contextlib.suppress(OSError), open(path) as f:
            out.update(int(pid) for pid in f.read().split())
    return out


def _uid_and_state(pid: int) -> tuple[int, str] | None:
    """The real user id and state letter of ``pid`` (None once it is gone)."""
    uid, state = -1, ""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    state = line.split()[1]
                elif line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    break
    except (OSError, ValueError, IndexError):
        return None
    return uid, state


@cache
def orphans_of(uid: int) -> Orphans:
    """The one :class:`Orphans` of ``uid`` in this process: every sandbox must register with it,
    or another sandbox's sweep would take it for an orphan."""
    return Orphans(uid)


class Orphans:
    """The sandbox user's orphans, adopted and reaped by this process.

    Usage: start each sandbox inside :meth:`starting` and :meth:`started` it, :meth:`finished` it
    once its ``Popen`` was waited for; :meth:`sweep` kills and reaps every other child of this
    process that runs as ``uid`` (an orphan: its parent died).

    Use :func:`orphans_of`, not this class: two registries of one user would sweep each other's
    sandboxes.

    Args:
        uid: the sandbox user (never this process's own: its other children would be swept).
    """

    def __init__(self, uid: int) -> None:
        if uid == os.getuid():
            raise ValueError("Orphans must sweep a user other than the trainer's own")
        self.uid = uid
        self.adopting = become_subreaper()
        self._lock = threading.Lock()
        self._ours: set[int] = set()

    def starting(self) -> threading.Lock:
        """Hold while a sandbox is spawned and :meth:`started`: no sweep sees it unregistered."""
        return self._lock

    def started(self, pid: int) -> None:
        """Call with :meth:`starting` held."""
        self._ours.add(pid)

    def finished(self, pid: int) -> None:
        """The sandbox ``pid`` was waited for; sweep what it left."""
        with self._lock:
            self._ours.discard(pid)
        self.sweep()

    def sweep(self) -> int:
        """Kill and reap this process's children of ``uid`` that no running sandbox started;
        returns how many were reaped."""
        if not self.adopting:
            return 0
        with self._lock:
            found = {pid: _uid_and_state(pid) for pid in _children() - self._ours}
            theirs = {pid: got[1] for pid, got in found.items() if got is not None and got[0] == self.uid}
            for pid, state in theirs.items():
                if state != "Z":
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)  # escaped its group, or outlived its parent
            return sum(_reap(pid) for pid in theirs)


def _reap(pid: int) -> bool:
    """Wait for a child that is dead or was sent SIGKILL (at most :data:`REAP_S`)."""
    deadline = time.monotonic() + REAP_S
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if done == pid:
            return True
        if time.monotonic() > deadline:
            return False  # the next sweep tries again
        time.sleep(0.005)
