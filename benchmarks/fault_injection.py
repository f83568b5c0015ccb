"""Fault injection: kill a demo run with SIGKILL at random moments, resume it each time, check it.

After every kill, every ``checkpoints/iter-*`` folder must verify (manifest, files, sizes) and
load; at the end the metrics must hold each iteration exactly once, and the adapters and metrics
rows (timings aside) must equal those of the same run done without interruption.

    python benchmarks/fault_injection.py --kills 12 --out benchmarks/results/fault_injection.json

With ``--loggers tensorboard,wandb,mlflow,trackio`` the killed run also logs to those trackers
(offline, in the temporary folder), and at the end each must hold every iteration once with the
values of ``metrics.jsonl`` (measured times and memory aside).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from marft.reporting.metrics import read_metrics, reproducible
from marft.trainer.checkpoint import list_checkpoints, load_trainer_files, verify_checkpoint


def settings(iterations: int, loggers: str = "") -> list[str]:
    return [
        f"run.iterations={iterations}",
        "env.n_envs=32",
        "run.checkpoint_every=1",  # a save every iteration: many kills land inside one
        "run.keep_checkpoints=3",
        "run.progress=false",
        f"run.loggers=[{loggers}]",
        "run.wandb.mode=offline",
        "run.torch_threads=1",
    ]


def marft(args: list[str], iterations: int, loggers: str = "") -> list[str]:
    sets = [x for s in settings(iterations, loggers) for x in ("--set", s)]
    return [sys.executable, "-m", "marft.cli", "train", *args, *sets]


def check_checkpoints(run_dir: Path) -> int:
    """Verify and load every ``iter-*`` folder; returns how many there are."""
    folders = sorted((run_dir / "checkpoints").glob("iter-*")) if (run_dir / "checkpoints").exists() else []
    for folder in folders:
        verify_checkpoint(folder)  # raises on a missing or truncated file
        load_trainer_files(folder)
        for role_dir in (folder / "adapters").iterdir():
            load_file(str(role_dir / "adapter_model.safetensors"))
    assert len(list_checkpoints(run_dir)) == len(folders)
    return len(folders)


def check_trackers(run_dir: Path, rows: list[dict], loggers: str, work: Path) -> dict[str, dict]:
    """What each tracker stored after all the kills: every iteration once, and the values of
    ``metrics.jsonl`` (measured times and memory aside: a tracker keeps the first session's)."""
    from marft.reporting.trackers import tracker_metrics
    from marft.reporting.trackers.readback import (
        mlflow_stored,
        tensorboard_stored,
        trackio_stored,
        wandb_offline,
    )

    readers = {
        "tensorboard": lambda: tensorboard_stored(run_dir),
        "wandb": lambda: wandb_offline(run_dir),
        "mlflow": lambda: mlflow_stored(run_dir),
        "trackio": lambda: trackio_stored("marft", run_dir.name, str(work / "trackio_dir")),
    }
    agents = yaml.safe_load((run_dir / "config.yaml").read_text())["team"]["agents"]
    roles = [a["role"] for a in agents]
    out = {}
    for name in filter(None, loggers.split(",")):
        stored = readers[name]()
        differ = []
        for r in rows:
            got = stored.metrics.get(r["iteration"], {})
            for k, v in tracker_metrics(reproducible(r), roles).items():
                if k != "iteration" and (
                    k not in got or not math.isclose(got[k], v, rel_tol=1e-6, abs_tol=1e-9)
                ):
                    differ.append((r["iteration"], k))
        out[name] = {
            "run_ids": sorted(stored.run_ids),
            "every_iteration_once": stored.steps == list(range(len(rows))),
            "steps_missing": sorted(set(range(len(rows))) - set(stored.steps)),
            "steps_repeated": sorted({s for s in stored.steps if stored.steps.count(s) > 1}),
            "values_differ": differ[:10],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--min-delay", type=float, default=3.0, help="earliest kill after a (re)start, seconds")
    p.add_argument("--max-delay", type=float, default=12.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument(
        "--loggers",
        default="",
        help="trackers of the killed run, e.g. tensorboard,wandb,mlflow,trackio (offline, in a temporary "
        "folder); at the end each must hold every iteration once, with the values of metrics.jsonl",
    )
    args = p.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    work = Path(tempfile.mkdtemp(prefix="marft-faults-"))
    ref, victim = work / "reference", work / "runs" / "victim"
    env.update(
        {
            k: str(work / k.lower())
            for k in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "TRACKIO_DIR")
        }
    )
    env["WANDB_SILENT"] = "true"

    t0 = time.perf_counter()
    subprocess.run(marft(["--out", str(ref)], args.iterations), check=True, env=env, capture_output=True)
    ref_s = time.perf_counter() - t0

    kills, log = 0, []
    started = False
    while kills < args.kills:
        cmd = marft(
            ["--resume", str(victim)] if started else ["--out", str(victim)], args.iterations, args.loggers
        )
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        delay = rng.uniform(args.min_delay, args.max_delay)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            if proc.returncode != 0:
                raise SystemExit(f"run failed: {proc.stderr.read()}")
            break  # finished before the kill: the run is too short for the kills asked for
        done = len(read_metrics(victim)) if (victim / "metrics.jsonl").exists() else 0
        n_ckpt = check_checkpoints(victim)
        newest = list_checkpoints(victim)[-1].name if n_ckpt else None
        started = started or n_ckpt > 0
        log.append({"kill": kills, "after_s": round(delay, 2), "rows_on_disk": done, "newest": newest})
        print(
            f"kill {kills}: after {delay:.1f} s, {done} rows on disk, newest checkpoint {newest}", flush=True
        )
        if not n_ckpt and victim.exists():
            shutil.rmtree(victim)  # killed before its first save: start afresh, as a user would
    final = subprocess.run(
        marft(
            ["--resume", str(victim)] if started else ["--out", str(victim)], args.iterations, args.loggers
        ),
        env=env,
        capture_output=True,
        text=True,
    )
    assert final.returncode == 0, final.stderr
    check_checkpoints(victim)

    rows, ref_rows = read_metrics(victim), read_metrics(ref)
    iters = [r["iteration"] for r in rows]
    untimed = [reproducible(r) for r in rows]
    ref_untimed = [reproducible(r) for r in ref_rows]
    a, b = list_checkpoints(ref)[-1], list_checkpoints(victim)[-1]
    same = all(
        torch.equal(x, load_file(str(b / "adapters" / d.name / "adapter_model.safetensors"))[k])
        for d in (a / "adapters").iterdir()
        for k, x in load_file(str(d / "adapter_model.safetensors")).items()
    )
    result = {
        "command": "python benchmarks/fault_injection.py " + " ".join(sys.argv[1:]),
        "kills": kills,
        "iterations": args.iterations,
        "reference_run_s": round(ref_s, 1),
        "every_checkpoint_valid_after_every_kill": True,  # check_checkpoints raised otherwise
        "metrics_iterations_exactly_once": iters == list(range(args.iterations)),
        "metrics_rows_equal_uninterrupted": untimed == ref_untimed,
        "adapters_bit_identical_to_uninterrupted": same,
        "final_return_last5": sum(r["episode_return"] for r in rows[-5:]) / 5,
        "trackers": check_trackers(victim, rows, args.loggers, work),
        "log": log,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work)
    ok = result["metrics_iterations_exactly_once"] and result["metrics_rows_equal_uninterrupted"] and same
    ok = ok and all(t["every_iteration_once"] and not t["values_differ"] for t in result["trackers"].values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
