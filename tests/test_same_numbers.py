"""Same seeds, same numbers: the demo's metrics rows and adapters match a fixture
(``tests/fixtures/record_same_numbers.py``). It was recorded before the architecture change of
issue 11 and recorded again, on purpose, when issue 13 gave every env copy its own random stream
(what is sampled changed) and made the entropy and KL terms micro-batch independent, and once
more when issue 14 took log-probs by applying the output layer to real response tokens only, in
chunks: float32 rounding of the differently shaped product moved the recorded rows by at most
6e-6 relative (an ``approx_kl``, a small difference of log-probs) and adapter sums after three
iterations by at most 5e-5. Recorded again, on purpose, when issue 33 gave every env copy's resets a
stream of their own (:func:`marft.rollout.streams.problem_stream`: the problems met changed) and
drew group-relative minibatches by whole groups.

Each case runs in a subprocess whose CPU kernels are pinned to the fixture's capability (AVX2:
``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA``), so an AVX-512 host
uses the instructions of the AVX2 recording host (unpinned, float32 rows differed there by 1.4e-6
relative). The pin does not make hosts bit-identical: MKL and oneDNN still choose kernels by CPU
model. On an Intel Xeon (2026-12-06) rows differed from this fixture (recorded on an AVX2 host)
by up to 3.3e-5 relative (a ``policy_loss`` in the third iteration of ``tppo_horizon_cuts``) and
adapter sums by up to 1.5e-4 relative (a small sum; 1.9e-4 absolute on one of 6.6), while an AMD
EPYC (AVX-512, pinned) matched it bit for bit. So on another CPU model (or torch) rows must match
to 2e-4 relative and tensor sums to 2e-3 relative (6x and 13x those deviations; a change of what
is computed moves them by far more); on the recording host's CPU model with the fixture's torch
(the fixture's ``cpu``; record it again on the host that checks a refactor), rows must match to
1e-6 and tensors bit for bit. A value that cancels to about zero (``return_target_mean``, a
mean of terms near 1) has no relative precision: across CPU models it must match to 1e-7
absolute, the float32 rounding of its terms (on an Intel Xeon, 2026-12-07: 1.6e-9 against the
fixture's -9.3e-10); on the recording host to 1e-9.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures.record_same_numbers import cpu_model, kernel_env

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "same_numbers.json").read_text())
SAME_HOST = FIXTURE["torch"] == torch.__version__ and FIXTURE.get("cpu") == cpu_model() != ""
ROW_REL = 1e-6 if SAME_HOST else 2e-4
ROW_ABS = 1e-9 if SAME_HOST else 1e-7
SUM_REL = 2e-3


def close(a, b, rel=ROW_REL, abs_=ROW_ABS) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
    return a == b


@pytest.fixture(scope="module")
def recorded_again(tmp_path_factory) -> dict:
    """Every case recorded again, in one subprocess whose kernels are the fixture's."""
    out = tmp_path_factory.mktemp("same_numbers") / "again.json"
    env = {**os.environ, **kernel_env(FIXTURE["cpu_capability"]), "PYTHONPATH": str(ROOT)}
    script = ROOT / "tests" / "fixtures" / "record_same_numbers.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, env=env, cwd=out.parent
    )
    assert proc.returncode == 0, proc.stderr
    again = json.loads(out.read_text())
    assert again["cpu_capability"] == FIXTURE["cpu_capability"]  # the pin took effect
    return again["cases"]


@pytest.mark.parametrize("case", sorted(FIXTURE["cases"]))
def test_fixed_seeds_give_the_recorded_numbers(case, recorded_again):
    expected = FIXTURE["cases"][case]
    got_case = recorded_again[case]
    assert got_case["overrides"] == expected["overrides"]
    rows = got_case["rows"]
    assert len(rows) == len(expected["rows"])
    for got, want in zip(rows, expected["rows"], strict=True):
        missing = set(want) - set(got)
        assert not missing, f"metrics no longer logged: {sorted(missing)}"
        bad = {k: (got[k], want[k]) for k in want if not close(got[k], want[k])}
        assert not bad, f"iteration {want['iteration']}: {bad}"
    tensors = got_case["tensors"]
    assert set(tensors) == set(expected["tensors"])
    for name, want in expected["tensors"].items():
        if SAME_HOST:
            assert tensors[name]["sha256"] == want["sha256"], f"{name} is not bit-identical"
        else:
            assert close(tensors[name]["sum"], want["sum"], rel=SUM_REL, abs_=1e-7), name
