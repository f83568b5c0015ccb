"""APPO, TPPO and the group-relative algorithms on the demo, side by side.

Each algorithm runs the built-in demo (same team, env, model and hyper-parameters; only
``algorithm.name`` changes) in a fresh process, and the table reports the first iteration at
which the return reaches 0.9 (mean over a 3-iteration window, so one lucky batch does not count),
the training wall time up to then, the mean return over the last 5 iterations, the critic's
parameter count and the process's peak memory. Usage::

    python benchmarks/algorithms.py                                  # appo tppo grpo rloo, seed 0
    python benchmarks/algorithms.py --algos appo grpo --seeds 0 1 --iterations 100
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

from fresh import run_fresh

WINDOW = 3


def run_one(algo: str, seed: int, iterations: int, out: str) -> dict:
    import time

    from marft.compose import load_config
    from marft.trainer import train

    cfg = load_config(
        "demo",
        [
            f"algorithm.name={algo}",
            f"run.seed={seed}",
            f"run.iterations={iterations}",
            "run.progress=false",
            "run.loggers=[]",
        ],
    )
    t0 = time.perf_counter()
    result = train(cfg, out)
    wall = time.perf_counter() - t0
    returns = [r["episode_return"] for r in result.rows]
    hit = next(
        (i for i in range(WINDOW - 1, len(returns)) if sum(returns[i - WINDOW + 1 : i + 1]) / WINDOW >= 0.9),
        None,
    )
    head = result.checkpoint / "value_head.pt"
    critic_params = 0
    if head.exists():
        import torch

        critic_params = sum(t.numel() for t in torch.load(head).values())
    return {
        "algorithm": algo,
        "seed": seed,
        "iterations": iterations,
        "iter_to_0.9": hit,
        "time_to_0.9_s": result.rows[hit]["time_s"] if hit is not None else None,
        "env_steps_to_0.9": result.rows[hit]["env_steps"] if hit is not None else None,
        "last5_return": sum(returns[-5:]) / 5,
        "train_time_s": result.rows[-1]["time_s"],
        "wall_s": wall,
        "sec_per_iter": result.rows[-1]["time_s"] / len(result.rows),
        "critic_params": critic_params,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="+", default=["appo", "tppo", "grpo", "rloo"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--iterations", type=int, default=80)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/algorithms.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        algo, seed, iters, out = args.one.split(",")
        print(json.dumps(run_one(algo, int(seed), int(iters), out)))
        return
    rows = []
    print(
        "| algorithm | seed | iter to 0.9 | time to 0.9 (s) | env steps to 0.9 | last-5 return | s/iter "
        "| critic params | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for algo in args.algos:
        for seed in args.seeds:
            spec = f"{algo},{seed},{args.iterations},/tmp/marft-bench-algos/{algo}-{seed}"
            r = run_fresh(__file__, "--one", spec)
            rows.append(r)
            fmt = lambda v, f: "never" if v is None else format(v, f)  # noqa: E731
            print(
                f"| {algo} | {seed} | {fmt(r['iter_to_0.9'], 'd')} | {fmt(r['time_to_0.9_s'], '.1f')} | "
                f"{fmt(r['env_steps_to_0.9'], 'd')} | {r['last5_return']:.3f} | {r['sec_per_iter']:.3f} | "
                f"{r['critic_params']} | {r['peak_rss_mb']:.0f} |",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
