"""Synchronous against asynchronous Ray rollouts (issue 36): seconds per iteration and learning per
generated token, per seed.

Each (seed, S) is one ``marft train`` process with one rollout worker and the learner, each on one
torch thread (``run.ray.worker_cpus=1``, ``run.torch_threads=1``: on a 2-core machine one core each),
the decoupled-PPO correction on (``algorithm.rollout_correction=tis``) in both cases, so that only
``run.ray.async.max_staleness`` differs. A run folder that already holds all its iterations is
read again, not rerun. Prints and writes (``--out``), per run: wall time, the median seconds per
iteration, the return over the first and last 5 iterations and per 10, the generated tokens, and
the range of the listener's mean importance weight and capped share::

    python benchmarks/async_rollouts.py demo --seeds 0 1 2 --staleness 0 1 \\
        --runs /tmp/async-runs --out benchmarks/results/async_demo_seeds.json
    python benchmarks/async_rollouts.py smollm2_arith --set model.name=$M --set run.iterations=4 \\
        --seeds 0 --staleness 0 1 --runs /tmp/async-arith
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMON = [
    "run.ray.address=local",
    "run.ray.rollout_workers=1",
    "run.ray.worker_cpus=1",
    "run.torch_threads=1",
    "algorithm.rollout_correction=tis",
    "run.report=false",
    "run.loggers=[]",
]


def run(config: str, overrides: list[str], folder: Path) -> float | None:
    """Train into ``folder`` unless it is finished; the wall seconds (None when reused)."""
    done = folder / "done"
    if done.exists():
        return json.loads(done.read_text())["wall_s"]
    sets = [x for o in overrides for x in ("--set", o)]
    t0 = time.perf_counter()
    command = [sys.executable, "-m", "marft.cli", "train", config, *sets, "--out", str(folder)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    done.write_text(json.dumps({"wall_s": wall}))
    return wall


def summarise(folder: Path, wall: float | None) -> dict:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    ret = [r["episode_return"] for r in rows]
    last_role = [k.split("/", 1)[1] for k in rows[0] if k.startswith("tis_weight_mean/")][-1:]
    tis = [r[f"tis_weight_mean/{last_role[0]}"] for r in rows] if last_role else []
    capped = [r[f"tis_capped/{last_role[0]}"] for r in rows] if last_role else []
    return {
        "wall_s": wall,
        "iterations": len(rows),
        "median_iter_s": statistics.median(r["time_iter_s"] for r in rows),
        "median_collect_s": statistics.median(r["time_collect_s"] for r in rows),
        "median_policy_s": statistics.median(r["time_policy_s"] for r in rows),
        "generated_tokens": rows[-1]["generated_tokens"],
        "first5": statistics.mean(ret[:5]),
        "last5": statistics.mean(ret[-5:]),
        "per10": [statistics.mean(ret[i : i + 10]) for i in range(0, len(ret), 10)],
        "returns": ret,
        "tokens": [r["generated_tokens"] for r in rows],
        "tis_weight_mean_range": [min(tis), max(tis)] if tis else None,
        "tis_capped_max": max(capped) if capped else None,
        "staleness_last": {k: v for k, v in rows[-1].items() if k.startswith("staleness/")},
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a preset name or a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--staleness", type=int, nargs="+", default=[0, 1])
    p.add_argument("--runs", type=Path, default=Path("runs/async-rollouts"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    results = []
    for seed in args.seeds:
        for s in args.staleness:
            folder = args.runs / f"seed{seed}-S{s}"
            overrides = [*COMMON, *args.set, f"run.seed={seed}", f"run.ray.async.max_staleness={s}"]
            out = {"seed": seed, "max_staleness": s, **summarise(folder, run(args.config, overrides, folder))}
            results.append(out)
            per10 = ", ".join(f"{x:.2f}" for x in out["per10"])
            print(
                f"seed {seed} S={s}: wall {out['wall_s']:.1f} s, iteration {out['median_iter_s']:.2f} s "
                f"(collect {out['median_collect_s']:.2f}, policy {out['median_policy_s']:.2f}), "
                f"return first5 {out['first5']:.3f} last5 {out['last5']:.3f}, per 10 [{per10}], "
                f"{out['generated_tokens']} tokens"
            )
    if args.out is not None:
        args.out.write_text(json.dumps({"command": sys.argv, "runs": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
