"""Sandboxed executions per second for MBPP-sized programs, and the cost of the sandbox per program.

Cases, each over the same MBPP reference solutions with their tests (``--data``: MBPP's test split
from the Hugging Face hub by default, or a local JSONL file of MBPP or HumanEval rows):

* ``bare``: ``python -c pass`` for each program, one after another: what starting the interpreter
  costs at all, the floor of any process-per-program design;
* ``sandbox-1``: the sandbox with one worker (the same programs, one after another);
* ``sandbox-N``: the sandbox with one worker per core, through ``Sandbox.map``;
* ``sandbox-N-2GB``: the same, from a parent holding 2 GB (a trainer's memory: how a parent's size
  changes the cost of starting a child).

The share of a training iteration spent in the sandbox comes from a run's ``metrics.jsonl``
(``--run DIR``): ``time_env_s`` (the env steps, sandbox included) and ``sandbox_seconds`` (the
programs' own wall time, summed over parallel runs) against ``time_iter_s``. Usage::

    python benchmarks/sandbox.py --programs 300 --out benchmarks/results/sandbox_cpu.json
    python benchmarks/sandbox.py --data PATH/mbpp_test.jsonl --programs 300
    python benchmarks/sandbox.py --run runs/smollm2-code --programs 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fresh import save_results

DATA = "hf:google-research-datasets/mbpp:full"


def jobs(data: str, split: str | None, n: int):
    from marft.envs.code.env import load_tasks

    tasks = load_tasks(data, split, (), False)[:n]
    return [t.id for t in tasks], [t.job(t.solution) for t in tasks]


def bare(n: int, python: str) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run([python, "-I", "-c", "pass"], check=True)
    return time.perf_counter() - t0


def timed_map(box, batch) -> tuple[float, list]:
    box.map(batch[:8])  # warm up: the interpreter's files in the page cache
    t0 = time.perf_counter()
    results = box.map(batch)
    return time.perf_counter() - t0, results


def run_cases(data: str, split: str | None, n: int) -> list[dict]:
    import torch

    from marft.envs.code.sandbox import Limits, Sandbox, Status

    ids, batch = jobs(data, split, n)
    cores = len(os.sched_getaffinity(0))
    one, many = Sandbox(Limits(), workers=1), Sandbox(Limits(), workers=cores)
    rows = []
    seconds = bare(len(batch), one.setup.python)
    rows.append({"case": "bare python -c pass", "programs": len(batch), "seconds": seconds})
    for name, box in (("sandbox-1", one), (f"sandbox-{cores}", many)):
        seconds, results = timed_map(box, batch)
        ok = sum(r.status is Status.PASSED for r in results)
        failed = [[i, r.detail] for i, r in zip(ids, results, strict=True) if r.status is not Status.PASSED]
        row = {"case": name, "programs": len(batch), "seconds": seconds, "passed": ok, "failed": failed[:20]}
        rows.append(row)
    ballast = torch.ones(2**29)  # 2 GB resident, as a trainer holds
    seconds, results = timed_map(many, batch)
    rows.append({"case": f"sandbox-{cores}-2GB", "programs": len(batch), "seconds": seconds})
    del ballast
    for row in rows:
        row["programs_per_s"] = row["programs"] / row["seconds"]
        row["ms_per_program"] = 1000 * row["seconds"] / row["programs"]
    rows.append({"isolation": one.setup.isolation, "python": one.setup.python, "cores": cores})
    return rows


def iteration_share(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    it = statistics.mean(r["time_iter_s"] for r in rows)
    env = statistics.mean(r.get("time_env_s", 0.0) for r in rows)
    box = statistics.mean(r.get("sandbox_seconds", 0.0) for r in rows)
    runs = statistics.mean(r.get("sandbox_runs", 0.0) for r in rows)
    return {
        "run": str(run),
        "iterations": len(rows),
        "time_iter_s": it,
        "time_env_s": env,
        "env_share": env / it,
        "sandbox_seconds": box,
        "sandbox_runs": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", type=int, default=300, help="how many of the tasks (0: skip)")
    p.add_argument("--data", default=DATA, help=f"hf:NAME[:CONFIG] or a JSONL file (default {DATA})")
    p.add_argument("--split", default="test", help="split of a hub dataset (default test)")
    p.add_argument("--run", type=Path, help="a code run's folder: its iteration share in the sandbox")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows = run_cases(args.data, args.split, args.programs) if args.programs else []
    if args.run is not None:
        rows.append(iteration_share(args.run))
    for row in rows:
        print(json.dumps(row))
    save_results(args.out, rows)


if __name__ == "__main__":
    sys.exit(main())
