"""Rollout workers on Ray against one process: seconds per iteration by phase, peak memory per
process, and bytes moved per iteration (adapters to the workers, trajectories back).

Each setting runs in a fresh subprocess (a local Ray instance is started there). On a 2-core
machine this shows the overheads of the distributed path, not a speed-up. Usage::

    python benchmarks/scaling.py --model tiny --iters 5 --out benchmarks/results/scaling_tiny.json
    python benchmarks/scaling.py --model smollm2 --iters 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from fresh import run_fresh

HALF = ["run.ray.worker_cpus=0.5", "run.ray.learner_cpus=0.5"]
SETTINGS = {
    "one process": [],
    "K=1": ["run.ray.rollout_workers=1"],
    "K=2": ["run.ray.rollout_workers=2"],
    "K=1,G=2": ["run.ray.rollout_workers=1", "run.ray.learners=2", *HALF],
    "K=2,G=2": ["run.ray.rollout_workers=2", "run.ray.learners=2", *HALF],
}


def run_one(model: str, setting: str, iters: int) -> dict:
    from marft.compose import load_config
    from marft.trainer import Trainer

    ov = ["run.progress=false", "run.loggers=[]", "run.report=false", "run.checkpoint_every=0"]
    ov += [f"run.iterations={iters + 1}"]
    if setting != "one process":
        ov += ["run.ray.address=local", "run.torch_threads=1", *SETTINGS[setting]]
    if model == "smollm2":
        from marft.models.smollm2 import smollm2_path

        preset = "smollm2_arith"
        ov += [f"model.name={smollm2_path()}", "env.n_envs=8"]
    else:
        preset = "demo"
        ov += ["env.n_envs=64", "sampling.max_new_tokens=8"]
    cfg = load_config(preset, ov)
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run")
    t0 = time.perf_counter()
    trainer.setup()
    setup = time.perf_counter() - t0
    close, trainer.close = trainer.close, lambda: None  # keep the workers to read their memory
    rows = trainer.train().rows[1:]  # the first iteration warms up
    phases = ("collect", "score", "advantages", "critic", "policy", "sync")
    out = {
        "setting": setting,
        "model": model,
        "iters": iters,
        "setup_s": setup,
        "sec_iter": statistics.mean(r["time_iter_s"] for r in rows),
        **{f"sec_{p}": statistics.mean(r.get(f"time_{p}_s", 0.0) for r in rows) for p in phases},
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "episode_return_last": rows[-1]["episode_return"],
    }
    if setting != "one process":
        out["worker_peak_rss_mb"] = trainer.parts.sampler.worker_peak_rss_mb()
        if trainer.peers.learners is not None:
            out["learner_peak_rss_mb"] = trainer.peers.learners.peak_rss_mb()
        out["adapter_bytes_per_iter"] = statistics.mean(r["adapter_bytes_sent"] for r in rows)
        out["trajectory_bytes_per_iter"] = statistics.mean(r["trajectory_bytes"] for r in rows)
    close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.model, args.one, args.iters)))
        return
    rows = []
    for setting in args.settings:
        row = run_fresh(__file__, "--model", args.model, "--iters", str(args.iters), "--one", setting)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
