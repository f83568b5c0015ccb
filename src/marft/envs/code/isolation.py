"""How a sandboxed process is isolated: bubblewrap, else ``unshare``, else nothing (with a warning).

:func:`probe` finds, once per process, the strongest isolation that works here and an interpreter
that the sandbox user can run. Under a root parent that user is ``nobody``: the kernel never
enforces the process-count limit for root, and ``nobody`` can write almost nowhere. In a user
namespace of its own (bubblewrap's or unshare's), a sandbox's processes are counted apart from
every other sandbox's, so one fork bomb cannot starve its neighbours.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

log = logging.getLogger(__name__)

NOBODY = 65534
"""The user and group a root parent runs sandboxes as."""
PATH = "/usr/local/bin:/usr/bin:/bin"

Isolation = Literal["bwrap", "unshare", "none"]
_WHAT_IS_MISSING = {
    "unshare": "the file system is not read-only (the program can write wherever user {uid} can)",
    "none": (
        "no namespaces: the program can use the network, see other processes and their "
        "environments, and write wherever user {uid} can; the process-count limit counts all of "
        "that user's processes (it is raised to processes x workers)"
    ),
}


SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""What a sandbox under bubblewrap sees of the host, read-only (where they exist), besides its
interpreter's own prefixes: no home, no ``/work``, ``/srv``, ``/mnt``, ``/var`` or ``/opt``, so no
dataset file (and no expected value in it) is in reach of a program."""


def wrapper(isolation: Isolation, workdir_mb: int = 64, prefixes: tuple[str, ...] = ()) -> list[str]:
    """The command that isolates the interpreter's command line (empty for ``none``); under bwrap the
    program sees :data:`SYSTEM_DIRS` and the interpreter's ``prefixes``, read-only, and nothing else
    of the host's file system."""
    if isolation == "bwrap":
        # --unshare-all also unshares the user namespace, in which the process limit is counted.
        size = ["--size", str(workdir_mb * 2**20)]
        seen = [*SYSTEM_DIRS, *(p for p in prefixes if not p.startswith(SYSTEM_DIRS))]
        binds = [arg for path in dict.fromkeys(seen) for arg in ("--ro-bind-try", path, path)]
        return [
            "bwrap", *binds, "--dev", "/dev", "--proc", "/proc", *size, "--tmpfs", "/tmp",
            "--chdir", "/tmp", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--clearenv", "--setenv", "PATH", PATH, "--setenv", "HOME", "/tmp",
        ]  # fmt: skip
    if isolation == "unshare":
        return [
            "unshare",
            "--user",
            "--net",
            "--pid",
            "--ipc",
            "--mount",
            "--mount-proc",
            "--fork",
            "--kill-child",
        ]
    return []


def spawn(argv: list[str], uid: int | None, result_fds: tuple[int, ...], cwd: str) -> subprocess.Popen:
    """Start ``argv`` as ``uid`` in ``cwd`` with an empty environment, in a process group of its
    own, with its input empty, pipes on its output and ``result_fds`` left open in it."""
    change_user: dict = {}
    if uid is not None:
        setpriv = shutil.which("setpriv", path=PATH)
        if setpriv is not None:
            # The user changes in the child, after exec: Python can then start it with vfork,
            # not fork. Forking a trainer that holds gigabytes costs tens of milliseconds a program.
            argv = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
        else:
            change_user = {"user": uid, "group": uid, "extra_groups": []}
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=result_fds,
        env={"PATH": PATH, "HOME": cwd},
        cwd=cwd,
        start_new_session=True,  # its own process group: killed as one
        **change_user,
    )


def work_dir(uid: int | None) -> tempfile.TemporaryDirectory:
    """A fresh temporary folder that ``uid`` owns (the working folder without bubblewrap)."""
    tmp = tempfile.TemporaryDirectory(prefix="marft-sandbox-")
    if uid is not None:
        os.chown(tmp.name, uid, uid)
    return tmp


@dataclass(frozen=True)
class Setup:
    """How programs are run here (found once per process by :func:`probe`).

    Attributes:
        isolation: ``bwrap``, ``unshare`` or ``none``.
        python: the interpreter that runs them.
        uid: the user they run as (``nobody`` under a root parent), or None for the parent's.
        prefixes: see below.
    """

    isolation: Isolation
    python: str
    uid: int | None
    prefixes: tuple[str, ...] = ()
    """The interpreter's installation folders (``sys.prefix``, ``sys.base_prefix``, ...): bubblewrap
    shows them to the program beside the system folders."""


def _interpreters(python: str) -> list[str]:
    if python != "auto":
        return [python]
    # The trainer's own interpreter may sit where the sandbox user cannot read (pyenv under
    # /root): then a system python3, which runs the standard-library programs just as well.
    found = [sys.executable, os.path.realpath(getattr(sys, "_base_executable", sys.executable))]
    found += [p for p in (shutil.which("python3", path=PATH),) if p]
    return list(dict.fromkeys(found))


_PREFIXES = (
    "import os, sys; print('\\n'.join({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, "
    "os.path.dirname(os.path.abspath(sys.executable))}))"
)


@lru_cache(maxsize=8)
def prefixes(python: str) -> tuple[str, ...]:
    """The folders ``python`` runs from (empty where it does not run)."""
    try:
        out = subprocess.run([python, "-I", "-c", _PREFIXES], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(sorted(line for line in out.stdout.splitlines() if line.startswith("/")))


def _works(setup: Setup) -> bool:
    argv = [
        *wrapper(setup.isolation, prefixes=setup.prefixes),
        setup.python,
        "-I",
        "-c",
        "import json, resource",
    ]
    try:
        with work_dir(setup.uid) as tmp:
            proc = spawn(argv, setup.uid, (), tmp)
            proc.communicate(timeout=30)
        return proc.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@lru_cache(maxsize=8)
def probe(isolation: str = "auto", python: str = "auto") -> Setup:
    """The strongest isolation that works here, with an interpreter the sandbox user can run.

    Args:
        isolation: ``auto`` (bwrap, else unshare, else none) or one of them (then it must work).
        python: ``auto`` (the trainer's interpreter, else the system's ``python3``) or a path.

    Raises:
        RuntimeError: no interpreter runs under the wanted isolation (the message says what to set).
    """
    order: list[Isolation] = ["bwrap", "unshare", "none"] if isolation == "auto" else [isolation]  # type: ignore[list-item]
    root = os.geteuid() == 0
    for uid in [NOBODY, None] if root else [None]:
        for iso in order:
            if iso != "none" and shutil.which(iso) is None:
                continue
            for exe in _interpreters(python):
                if _works(setup := Setup(iso, exe, uid, prefixes(exe))):
                    return setup
    raise RuntimeError(
        f"no sandbox works here (isolation {isolation!r}, python {python!r}); install bubblewrap, "
        "or set sandbox.python to an interpreter that every user can run"
    )


@lru_cache(maxsize=8)
def warn_if_weak(setup: Setup) -> None:
    gaps = []
    if setup.isolation != "bwrap":
        how = "missing" if shutil.which("bwrap") is None else "not working here"
        gaps.append(f"bubblewrap (bwrap) is {how}")
        gaps.append(
            _WHAT_IS_MISSING[setup.isolation].format(uid=setup.uid if setup.uid is not None else os.geteuid())
        )
    if setup.uid is None and os.geteuid() == 0:
        gaps.append(
            f"no interpreter that user {NOBODY} can run was found, so programs run as root and "
            "the process-count limit does not hold (the kernel exempts root): set sandbox.python"
        )
    if gaps:
        log.warning(
            "The code sandbox is weaker than it should be: %s. Install bubblewrap for full isolation "
            "(Debian/Ubuntu: apt-get install bubblewrap).",
            "; ".join(gaps),
        )
