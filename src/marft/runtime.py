"""What this process may use of the machine: CPU threads, and how many of them to use now.

torch sizes its thread pool by the machine's cores, but a job often may use fewer: a CPU affinity
mask (``taskset``, Slurm, Kubernetes cpusets) or a cgroup CPU quota (Docker ``--cpus``, Kubernetes
limits). More threads than usable cores make torch's OpenMP threads wait on each other at every
operation, so marft sizes the pool to what this process may actually use.

The same happens when another process keeps one of those cores busy: each parallel operation
waits for the thread that shares that core, and OpenMP's spin-waiting keeps our other core busy
too, so the scheduler never moves the waiting thread over. Measured on the 2-core dev machine, the
demo (80 iterations, whole command) alone / beside one process that keeps a core busy: spinning
(GNU OpenMP's default) 87 s / 270 s; ``OMP_WAIT_POLICY=PASSIVE`` 131 s / 137 s; a short spin
(``GOMP_SPINCOUNT=1000``) 107 s / 179 s; one thread 112 s / 111 s. marft set passive waiting by
default for a while (issue 32): that made the demo on an idle machine 2.1x slower (147.6 s passive
against 56-63 s with ``OMP_WAIT_POLICY=ACTIVE`` or the default spin) and SmolLM2-135M 15% slower.

So marft now leaves OpenMP's waiting alone (its default, or whatever the user set in
``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``) and adapts the thread count instead:
a :class:`ThreadGovernor`, called at the start of each training phase (and each eval batch), reads
``/proc/stat`` and this process's CPU time and so knows how many cores *other* processes used
since its last look. When they took half a core or more of ours, torch gets that many threads
fewer (at least one: with one thread nobody waits, so spinning cannot collapse); when they are
gone, it gets all usable cores back. ``run.torch_threads`` > 0 fixes the count (no adapting);
so does a machine without ``/proc`` (macOS). The demo, whole command, alone / beside a busy core
(benchmarks/README.md, "CPU thread policies"): spinning without a governor 51-53 s / 188 s;
passive 104 s / 110 s; adaptive 53 s / 80 s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection
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
"""Environment variables by which a user sets how OpenMP threads wait (GNU and Intel runtimes);
marft sets none of them, so OpenMP's default or the user's choice applies."""


def configure_threads(requested: int = 0) -> int:
    """Set torch's CPU thread count: ``requested`` if > 0 (``run.torch_threads``), else
    :func:`usable_cpus`. Returns the number set."""
    import torch

    n = requested if requested > 0 else usable_cpus()
    torch.set_num_threads(n)
    return n


def own_cpu_seconds() -> float:
    """CPU seconds this process used (all its threads), plus those of its children that ended
    and were waited for (a finished sandbox run or grader: gone, so no longer competing)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def cpu_ticks(stat: str, cpus: Collection[int] | None = None) -> tuple[int, int, int] | None:
    """``(busy, total, n)``: clock ticks summed over the per-CPU lines (``cpuN``) of ``/proc/stat``
    text for the CPUs in ``cpus`` (None: all), and how many CPUs that was; None when none matched.

    busy is user + nice + system + irq + softirq; total adds idle, iowait and steal (guest time is
    inside user already)."""
    busy = total = n = 0
    for line in stat.splitlines():
        if not line.startswith("cpu"):
            if n:
                break  # the cpu lines come first; the rest (interrupt counts) can be long
            continue
        name, *fields = line.split()
        if name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in [*fields, *"0" * 8][:8])
        b = user + nice + system + irq + softirq
        busy, total, n = busy + b, total + b + idle + iowait + steal, n + 1
    return (busy, total, n) if n else None


class ThreadGovernor:
    """Gives torch fewer threads while other processes use this process's cores, and all usable
    cores again when they stop (see the module docstring for why).

    :meth:`adapt` compares CPU ticks since its last look: the busy ticks of the CPUs this process
    may run on (its affinity mask) minus its own CPU time are what *other* processes used, in
    cores over the elapsed time. The cores of ours they took (``others - (cpus - usable)``, so a
    2-core quota on a 64-core host only counts what leaves fewer than 2 cores free) are the
    contention; at ``REDUCE_AT`` or more torch gets ``usable - round(contention)`` threads (at
    least 1), below ``RESTORE_BELOW`` all ``usable``; between the two the count stays (hysteresis).
    Intervals shorter than ``MIN_INTERVAL_S`` are not judged: the next call measures from the
    same start. ``torch.set_num_threads`` is called only when the count changes. Each call reads
    ``/proc/stat`` once (tens of microseconds).

    Args:
        usable: the cores this process may use (what :func:`configure_threads` set).
        adaptive: False fixes the count (``run.torch_threads`` > 0).
        stat_path: ``/proc/stat`` (tests give a file of their own).
        own_cpu: this process's CPU seconds (tests give their own clock).
        cpus: the CPU numbers to look at (default: the affinity mask; None where unknown: all).
        clk_tck: clock ticks per second of ``/proc/stat`` (default: ``SC_CLK_TCK``).

    Attributes:
        threads: torch's thread count now.
        others: cores other processes used over the last judged interval.
        enabled: whether it adapts (adaptive, more than one usable core, ``/proc/stat`` readable).
    """

    REDUCE_AT = 0.5
    RESTORE_BELOW = 0.25
    MIN_INTERVAL_S = 0.5

    def __init__(
        self,
        usable: int,
        adaptive: bool = True,
        *,
        stat_path: Path = Path("/proc/stat"),
        own_cpu: Callable[[], float] = own_cpu_seconds,
        cpus: Collection[int] | None = None,
        clk_tck: int | None = None,
    ) -> None:
        self.usable = self.threads = usable
        self.others = 0.0
        self._stat_path, self._own_cpu = stat_path, own_cpu
        if cpus is None and hasattr(os, "sched_getaffinity"):
            cpus = os.sched_getaffinity(0)
        self._cpus = cpus
        if clk_tck is None and hasattr(os, "sysconf"):
            clk_tck = os.sysconf("SC_CLK_TCK")
        self._tck = clk_tck or 100
        self._last = self._sample() if adaptive and usable > 1 and clk_tck else None
        self.enabled = self._last is not None

    @classmethod
    def for_run(cls, requested: int = 0) -> ThreadGovernor:
        """Set torch's threads (:func:`configure_threads`) and govern them unless ``requested`` > 0."""
        return cls(configure_threads(requested), adaptive=requested <= 0)

    def _sample(self) -> tuple[int, int, int, float] | None:
        """(busy ticks, total ticks, CPUs, own CPU ticks), or None without a readable /proc/stat."""
        try:
            ticks = cpu_ticks(self._stat_path.read_text(), self._cpus)
        except (OSError, ValueError):
            return None
        return None if ticks is None else (*ticks, self._own_cpu() * self._tck)

    def adapt(self) -> int:
        """Judge the interval since the last judged call and set torch's threads; returns them."""
        if self._last is None or (now := self._sample()) is None:
            return self.threads
        busy, total, own = now[0] - self._last[0], now[1] - self._last[1], now[3] - self._last[3]
        cpus = now[2]
        if cpus != self._last[2] or total <= 0:  # CPUs came or went: start again from here
            self._last = now
            return self.threads
        elapsed = total / cpus  # ticks of wall time
        if elapsed < self.MIN_INTERVAL_S * self._tck:
            return self.threads
        self._last = now
        self.others = max(0.0, busy - own) / elapsed
        contention = self.others - (cpus - self.usable)
        if contention >= self.REDUCE_AT:
            target = max(1, self.usable - math.floor(contention + 0.5))
        elif contention < self.RESTORE_BELOW:
            target = self.usable
        else:
            target = self.threads
        if target != self.threads:
            import torch

            torch.set_num_threads(target)
            self.threads = target
        return self.threads
