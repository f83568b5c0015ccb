"""The learning tests' quantities on several seeds and CPU capabilities, to choose thresholds that
hold on any host and seed rather than on the one a test was tuned on.

Each case is one ``marft train`` process (a built-in preset, the tests' overrides, ``run.seed``),
run once per seed and per CPU capability (``default``: what the host has; ``avx2``: torch's, MKL's
and oneDNN's kernels pinned to AVX2, as on an older host). Printed and saved per run: the mean
return of the first 3, last 5 and last 10 iterations, the routing metrics the tests assert on
(``route_invalid`` of the last iteration and its mean over the last 5, route shares, whether the
last transcripts' router picked the right expert), the wall time, and the return (and
``route_invalid``) of every iteration: nothing in a run depends on ``run.iterations``, so a
shorter run's rows are the first rows of a longer one. Usage::

    python benchmarks/learning_seeds.py --cases routing demo --seeds 0 1 2 --capabilities default avx2 \\
        --out benchmarks/results/learning_seeds.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fresh import save_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.fixtures.record_same_numbers import kernel_env  # noqa: E402

QUIET = ["run.progress=false", "run.loggers=[]", "run.report=false", "run.checkpoint_every=0"]
CASES = {
    "demo": ("demo", []),
    "demo_nodep": ("demo", ["team.agents.1.observes=[]", "run.iterations=60"]),
    "demo_grpo": ("demo", ["algorithm.name=grpo"]),
    "routing": ("routing", []),
    "routing_uniform": ("routing", ["team.agents.0.route_by=uniform"]),
}
EXPERTS = {"sun": "north", "rain": "south", "snow": "east"}


def summarise(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    r = [row["episode_return"] for row in rows]
    out = {
        "iterations": len(r),
        "first3": statistics.mean(r[:3]),
        "last5": statistics.mean(r[-5:]),
        "last10": statistics.mean(r[-10:]),
    }
    if "route_invalid" in rows[-1]:
        out["route_invalid_last"] = rows[-1]["route_invalid"]
        out["route_invalid_last5"] = statistics.mean(row["route_invalid"] for row in rows[-5:])
        out["route_shares_last"] = {k: v for k, v in rows[-1].items() if k.startswith("route_share/")}
        lines = (run / "transcripts.jsonl").read_text().splitlines()
        turns = [t["turns"][0] for t in map(json.loads, lines[-10:])]
        out["right_expert_of_last10"] = sum(
            t["info"].get("expert") == EXPERTS.get(t["info"].get("kind")) for t in turns
        )
        out["route_invalid"] = [row["route_invalid"] for row in rows]
    out["returns"] = r  # per iteration: a shorter run's rows are this run's first rows
    return out


def run_case(case: str, seed: int, capability: str, folder: Path, extra: list[str]) -> dict:
    preset, overrides = CASES[case]
    overrides = [*overrides, *extra]
    env = dict(os.environ)
    if capability != "default":
        env.update(kernel_env(capability.upper()))
    run = folder / f"{case}-{seed}-{capability}"
    sets = [f"--set={s}" for s in [*QUIET, *overrides, f"run.seed={seed}"]]
    cmd = [
        sys.executable,
        "-c",
        "from marft.cli import main; main()",
        "train",
        preset,
        *sets,
        "--out",
        str(run),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{case} seed {seed} {capability} failed:\n{proc.stderr[-3000:]}")
    return {
        "case": case,
        "seed": seed,
        "capability": capability,
        "overrides": overrides,
        "wall_s": time.perf_counter() - t0,
        **summarise(run),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--capabilities", nargs="+", choices=["default", "avx2", "avx512"], default=["default", "avx2"]
    )
    ap.add_argument("--set", action="append", default=[], dest="extra", help="an override for every case")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            for capability in args.capabilities:
                for seed in args.seeds:
                    row = run_case(case, seed, capability, Path(tmp), args.extra)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    save_results(args.out, rows)


if __name__ == "__main__":
    main()
