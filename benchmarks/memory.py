"""Peak memory per iteration on issue 14's W1 workload: SmolLM2-135M, MATH, APPO, 4 env copies,
3 turns, 64-token actions; short or long prompts; two agents (``math_dual``) or four
(``math_quartet``).

Each case runs ``marft train`` in a fresh process. A thread here samples that process's resident
memory every 50 ms and splits the samples into iterations by the lines of its ``metrics.jsonl``,
so the figures do not depend on what the run reports about itself (older versions report nothing).
Prompt lengths: ``short`` takes the MATH training problems up to the median length (148
characters), ``long`` those of the longest tenth (422 characters and more); both are written to a
temporary folder, never into the repository. Usage::

    python benchmarks/memory.py --teams dual --prompts short long --iters 20 \
        --out benchmarks/results/memory_w1.json
    python benchmarks/memory.py --teams quartet --prompts long --iters 10 \
        --set algorithm.micro_batch_tokens=2048
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from fresh import save_results

DATA = "hf:DigitalLearningGmbH/MATH-lighteval"
TEAMS = {"dual": "math_dual", "quartet": "math_quartet"}
W1 = [
    "algorithm.name=appo",
    "algorithm.ppo_epochs=1",
    "algorithm.kl_coef=0",
    "env.n_envs=4",
    "env.horizon=3",
    "run.steps_per_iter=3",
    "env.kwargs.max_attempts=3",
    "sampling.max_new_tokens=64",
    "sampling.temperature=0.5",
    "sampling.top_k=50",
    "env.kwargs.problem_key=problem",
    "env.kwargs.answer_key=answer",
    "env.kwargs.answer_after=null",
    "lora.r=8",
    "lora.alpha=16",
    "lora.target_modules=[q_proj,v_proj]",
    "run.checkpoint_every=0",
    "run.report=false",
    "run.seed=10",
]


def prompt_sets(data: str, folder: Path) -> dict[str, Path]:
    """``short``/``long`` subsets of MATH train by problem length, written to ``folder``."""
    from marft.envs.math.env import load_problems

    problems = load_problems(data, "train" if data.startswith("hf:") else None, (), "problem", "answer", None)
    rows = [{"problem": p, "answer": a} for p, a in problems]
    lengths = sorted(len(r["problem"]) for r in rows)
    median, tenth = lengths[len(lengths) // 2], lengths[int(0.9 * len(lengths))]
    out = {}
    for name, keep in (("short", lambda n: n <= median), ("long", lambda n: n >= tenth)):
        path = folder / f"math_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if keep(len(r["problem"]))))
        out[name] = path
    return out


def run_case(team: str, data: Path, iters: int, extra: list[str], run_dir: Path) -> dict:
    """One ``marft train`` process; per-iteration peak and end-of-iteration RSS (MB)."""
    from marft.models.smollm2 import smollm2_path

    sets = [*W1, f"env.kwargs.data={data}", f"model.name={smollm2_path()}", f"run.iterations={iters}"]
    sets += ["run.progress=false", *extra]
    cmd = [
        sys.executable,
        "-c",
        "from marft.cli import main; main()",
        "train",
        TEAMS[team],
        "--out",
        str(run_dir),
    ]
    for s in sets:
        cmd += ["--set", s]
    metrics = run_dir / "metrics.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    peaks: list[float] = []  # index k: iteration k (the current one is the last entry)
    ends: list[float] = []
    done = threading.Event()

    def sample() -> None:
        lines = 0
        peaks.append(0.0)
        while not done.is_set():
            try:
                rss = watched.memory_info().rss / 2**20
            except psutil.Error:
                return
            n = sum(1 for _ in metrics.open()) if metrics.exists() else 0
            if n > lines:  # an iteration ended: its row is written
                lines = n
                ends.append(rss)
                peaks.append(rss)
            peaks[-1] = max(peaks[-1], rss)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    _, err = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        sys.exit(f"{team} on {data.name} failed:\n{err[-3000:]}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    secs = [r["time_iter_s"] for r in rows]
    phases = {
        p: statistics.median(r.get(f"time_{p}_s", 0.0) for r in rows) for p in ("collect", "score", "policy")
    }
    fwd_bwd = statistics.median(r.get("time_fwd_bwd_s", 0.0) for r in rows)
    own = {k: [r[k] for r in rows] for k in rows[0] if k.startswith("memory_")}
    return {
        "team": team,
        "prompts": data.stem.removeprefix("math_"),
        "iters": len(rows),
        "extra": extra,
        "wall_s": time.perf_counter() - t0,
        "s_per_iter_median": statistics.median(secs),
        "s_per_iter": secs,
        "phase_median_s": {**phases, "fwd_bwd": fwd_bwd},
        "prompt_tokens": [r.get("prompt_tokens") for r in rows],
        "peak_rss_mb": [round(p) for p in peaks[: len(rows)]],  # the first one includes the set-up
        "end_rss_mb": [round(e) for e in ends[: len(rows)]],
        "reported": own,  # what the run itself wrote (memory_* metrics), if anything
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teams", nargs="+", choices=sorted(TEAMS), default=["dual"])
    ap.add_argument("--prompts", nargs="+", choices=["short", "long"], default=["short", "long"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], dest="extra", help="extra config override")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--data", default=DATA, help=f"MATH train: hf:NAME or a JSONL file (default {DATA})")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = prompt_sets(args.data, Path(tmp))
        for team in args.teams:
            for prompts in args.prompts:
                r = run_case(team, sets[prompts], args.iters, args.extra, Path(tmp) / f"{team}_{prompts}")
                results.append(r)
                print(
                    f"{team:8s} {prompts:5s} s/iter {r['s_per_iter_median']:6.1f}  peak RSS max "
                    f"{max(r['peak_rss_mb'])} MB  per iteration {r['peak_rss_mb']}  "
                    f"end {r['end_rss_mb']}",
                    flush=True,
                )
    save_results(args.out, results)


if __name__ == "__main__":
    main()
