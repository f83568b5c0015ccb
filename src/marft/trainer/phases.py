"""Seconds and peak memory of each phase of an iteration.

Peak memory is what the process really held: on Linux the kernel's resident-set high-water mark
(``VmHWM``), reset at the start of each phase through ``/proc/self/clear_refs``; on CUDA also
``torch.cuda.max_memory_allocated``, reset the same way. Where the high-water mark cannot be
reset (not Linux, or not permitted) only the resident set at the end of the phase is known, and
that is what is reported.
"""

from __future__ import annotations

import ctypes
import functools
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_mb(key: str) -> float | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR.write_text("5")  # 5: reset the peak resident set size (proc(5))
        return True
    except OSError:
        return False


@functools.cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps what large tensors freed in its heap, so after an iteration with long prompts the
    process would go on holding its peak (the memory is reusable by this process only). Called
    at the end of each iteration, so ``memory_rss_mb`` is what is really in use. Returns whether
    memory was released.
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None and hasattr(libc, "malloc_trim") else False


def rss_mb() -> float | None:
    """This process's resident memory now (MB), or None off Linux."""
    return _status_mb("VmRSS")


@dataclass
class PhaseMeter:
    """Collects per-phase seconds and peak memory (MB) over one iteration.

    Attributes:
        seconds: phase -> seconds (summed if a phase repeats).
        peak_mb: phase -> peak resident memory during the phase.
        cuda_peak_mb: phase -> peak CUDA memory allocated by torch during the phase.
        before_phase: called as each phase starts; returns torch's CPU threads for the phase (the
            trainer's :class:`~marft.runtime.ThreadGovernor`; None: they are only read).
        thread_seconds: threads x seconds summed over the phases (:meth:`mean_threads`).
    """

    seconds: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    cuda_peak_mb: dict[str, float] = field(default_factory=dict)
    before_phase: Callable[[], int] | None = field(default=None, repr=False)
    thread_seconds: float = 0.0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        threads = self.before_phase() if self.before_phase is not None else torch.get_num_threads()
        resettable = _reset_high_water_mark()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.thread_seconds += threads * seconds
            peak = _status_mb("VmHWM" if resettable else "VmRSS")
            if peak is not None:
                self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), peak)
            if cuda:
                cuda_peak = torch.cuda.max_memory_allocated() / 2**20
                self.cuda_peak_mb[name] = max(self.cuda_peak_mb.get(name, 0.0), cuda_peak)

    def mean_threads(self) -> float:
        """torch's CPU threads over the phases so far, weighted by their seconds."""
        total = sum(self.seconds.values())
        return self.thread_seconds / total if total > 0 else float(torch.get_num_threads())

    def metrics(self) -> dict[str, float]:
        """``memory_peak_mb`` (the iteration's), ``memory_peak_<phase>_mb``, ``memory_rss_mb`` (at
        the end) and the ``cuda_`` counterparts: the rows' memory columns."""
        out: dict[str, float] = {}
        for prefix, peaks in (("memory", self.peak_mb), ("cuda_memory", self.cuda_peak_mb)):
            if peaks:
                out[f"{prefix}_peak_mb"] = max(peaks.values())
                out.update({f"{prefix}_peak_{k}_mb": v for k, v in peaks.items()})
        now = rss_mb()
        if now is not None:
            out["memory_rss_mb"] = now
        return out
