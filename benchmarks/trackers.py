"""What the experiment trackers cost a run: the whole command's wall time and the seconds spent
logging each iteration (``time_log_s``), for ``run.loggers`` [] / [tensorboard] / all four.

W&B runs offline, MLflow into a SQLite file, Trackio into a local database, all in a temporary
folder: nothing reaches a network.

    python benchmarks/trackers.py --iterations 10
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

SETS = {
    "none": "[]",
    "tensorboard": "[tensorboard]",
    "all four": "[tensorboard,wandb,mlflow,trackio]",
}


def run(loggers: str, iterations: int, tmp: Path, name: str) -> tuple[float, list[float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "TRACKIO_"))}
    env.update(
        WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
        WANDB_DATA_DIR=str(tmp / "wandb-data"),
        WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
        TRACKIO_DIR=str(tmp / "trackio"),
        WANDB_SILENT="true",
    )
    out = tmp / "runs" / name
    args = [
        f"run.loggers={loggers}",
        "run.wandb.mode=offline",
        f"run.iterations={iterations}",
        "run.progress=false",
        "run.checkpoint_every=0",
    ]
    cmd = [sys.executable, "-m", "marft.cli", "train", "demo", "--out", str(out)]
    cmd += [a for s in args for a in ("--set", s)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # A row carries the previous iteration's log seconds: rows 1.. hold iterations 0..N-2.
    return wall, [r["time_log_s"] for r in rows[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args()
    print("| run.loggers | whole command (s) | time_log_s per iteration, median (max) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for i, (label, loggers) in enumerate(SETS.items()):
            wall, logs = run(loggers, args.iterations, Path(d), f"r{i}")
            print(f"| {label} `{loggers}` | {wall:.1f} | {statistics.median(logs):.4f} ({max(logs):.4f}) |")


if __name__ == "__main__":
    main()
