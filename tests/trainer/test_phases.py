"""Per-phase peak memory: each phase's own high-water mark, not the process's lifetime peak."""

from pathlib import Path

import pytest
import torch

from marft.trainer.phases import PhaseMeter, release_free_memory, rss_mb

linux = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


@linux
def test_each_phase_reports_its_own_peak():
    meter = PhaseMeter()
    with meter.phase("big"):
        x = torch.ones(100 * 2**20)  # 400 MB, every page touched
        del x
    with meter.phase("small"):
        y = torch.ones(2**20)  # 4 MB
        del y
    with meter.phase("small"):  # a phase that repeats keeps its largest peak
        pass
    assert set(meter.seconds) == set(meter.peak_mb) == {"big", "small"}
    # the big phase saw the 400 MB; the next phase's mark was reset, so it did not
    assert meter.peak_mb["big"] - meter.peak_mb["small"] > 300
    m = meter.metrics()
    assert m["memory_peak_mb"] == meter.peak_mb["big"]
    assert m["memory_peak_small_mb"] == meter.peak_mb["small"]
    assert 0 < m["memory_rss_mb"] < m["memory_peak_big_mb"]


@linux
def test_freed_memory_is_handed_back():
    """glibc keeps the pages of freed small blocks in its heap (here 64 KB tensors with live
    neighbours, as a long iteration leaves them); releasing hands them back."""
    before = rss_mb()
    xs, pins = [], []
    for _ in range(6000):
        xs.append(torch.ones(16 * 1024))  # 64 KB: below glibc's mmap threshold, in the heap
        pins.append(torch.ones(64))  # a live neighbour, so the heap's top cannot just shrink
    del xs
    held = rss_mb() - before
    release_free_memory()
    assert held > 300  # the premise: freeing alone returned nothing
    assert rss_mb() - before < 100
