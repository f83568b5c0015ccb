"""What this process may use of the machine: CPU threads, and how they wait.

torch sizes its thread pool by the machine's cores, but a job often may use fewer: a CPU affinity
mask (``taskset``, Slurm, Kubernetes cpusets) or a cgroup CPU quota (Docker ``--cpus``, Kubernetes
limits). More threads than usable cores make torch's OpenMP threads wait on each other at every
operation, so marft sizes the pool to what this process may actually use.

The same happens when another process keeps a core busy: each parallel operation waits for the
thread that shares that core, and OpenMP's default spin-waiting keeps our other core busy too, so
the scheduler never moves the waiting thread over. Measured on the 2-core dev machine, the demo
(80 iterations, whole command) alone / beside one process that keeps a core busy: spinning (GNU
OpenMP's default) 87 s / 270 s; ``OMP_WAIT_POLICY=PASSIVE`` 131 s / 137 s; a short spin
(``GOMP_SPINCOUNT=1000``) 107 s / 179 s; one thread 112 s / 111 s. On SmolLM2-135M passive waiting
cost 2.6% (23.1 vs 23.7 s per iteration). The marft command therefore asks OpenMP for passive waiting
unless the user chose a policy: on a machine of your own, ``OMP_WAIT_POLICY=ACTIVE`` is faster for
tiny models.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _v2_quota(cpu_max: str | None) -> float | None:
    """CPUs allowed by cgroup v2's ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD" for no limit)."""
    parts = (cpu_max or "").split()
    if len(parts) == 2 and parts[0] != "max" and int(parts[1]) > 0:
        return int(parts[0]) / int(parts[1])
    return None


def _v1_quota(quota_us: str | None, period_us: str | None) -> float | None:
    """CPUs allowed by cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: no limit)."""
    if quota_us is None or period_us is None:
        return None
    quota, period = int(quota_us), int(period_us)
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_quota(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs this process's cgroup may use (e.g. 1.5), or None when unlimited or unknown.

    Looks at the process's own cgroup and at the root of the cgroup mount (inside a container
    the two are often the same folder), for cgroup v2 and v1; the smallest quota found wins.
    """
    own = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path.lstrip("/")
    quotas = [_v2_quota(_read(folder / "cpu.max")) for folder in {root / own.get("", ""), root}]
    for controllers, path in own.items():
        if "cpu" in controllers.split(","):
            for folder in {root / controllers / path, root / controllers}:
                quotas.append(
                    _v1_quota(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))
                )
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def usable_cpus() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (rounded
    down, at least 1)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""Environment variables by which a user sets how OpenMP threads wait (GNU and Intel runtimes)."""


def passive_openmp_by_default() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a wait policy or torch is loaded
    already (OpenMP reads it once, when it loads). Returns whether it was set."""
    import sys

    if "torch" in sys.modules or any(v in os.environ for v in WAIT_POLICY_VARIABLES):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def configure_threads(requested: int = 0) -> int:
    """Set torch's CPU thread count: ``requested`` if > 0 (``run.torch_threads``), else
    :func:`usable_cpus`. Returns the number set."""
    import torch

    n = requested if requested > 0 else usable_cpus()
    torch.set_num_threads(n)
    return n
