"""Wall time of a whole ``marft train`` command under several CPU thread policies, each on an idle
machine and beside a process that keeps one core busy (issue 32).

Policies (``U``: the cores this process may use, 2 on the dev machine):

* ``adaptive``: marft's default: OpenMP's own waiting (GNU: spin), ``U`` threads, fewer while other
  processes take cores (``marft.runtime.ThreadGovernor``);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, ``run.torch_threads=U`` (marft's default before);
* ``spin``: ``OMP_WAIT_POLICY=ACTIVE``, ``run.torch_threads=U``;
* ``one-thread``: ``run.torch_threads=1``;
* ``fixed`` (not run unless named): OpenMP's own waiting, ``run.torch_threads=U`` (marft before the
  passive default: the governor's effect alone).

Any wait-policy variable of the caller's environment is dropped first. "busy" starts
``python -c "while True: pass"`` pinned to the last usable core before the command and kills it
after. Each repeat runs every case, in reverse order on odd repeats; the time is measured around
the whole command (start-up and model load included). Before each case the CPU that other
processes used over one second is printed: an "idle" figure is only one if that is near 0.

Usage::

    python benchmarks/threads.py                                 # the demo, 80 iterations, 2 repeats
    python benchmarks/threads.py --iterations 2 --repeats 1      # a quick check that it works
    python benchmarks/threads.py --smollm2 --iterations 4 --set env.n_envs=8   # SmolLM2-135M
    python benchmarks/threads.py --preset my_team.yaml --set run.seed=1 --policies adaptive passive
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

from marft.runtime import WAIT_POLICY_VARIABLES, cpu_ticks, own_cpu_seconds, usable_cpus

POLICIES = ("adaptive", "passive", "spin", "one-thread", "fixed")
DEFAULT_POLICIES = ("adaptive", "passive", "spin", "one-thread")
LOADS = ("idle", "busy")


def policy(name: str, usable: int) -> tuple[dict[str, str], list[str]]:
    """The environment variables and ``--set`` overrides of a policy."""
    fixed = [f"run.torch_threads={usable}"]
    return {
        "adaptive": ({}, []),
        "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, fixed),
        "spin": ({"OMP_WAIT_POLICY": "ACTIVE"}, fixed),
        "one-thread": ({}, ["run.torch_threads=1"]),
        "fixed": ({}, fixed),
    }[name]


def others_cores(seconds: float = 1.0) -> float | None:
    """Cores that other processes used over the next ``seconds`` (None without /proc/stat)."""
    try:
        a, own_a = cpu_ticks(Path("/proc/stat").read_text(), usable_set()), own_cpu_seconds()
        time.sleep(seconds)
        b, own_b = cpu_ticks(Path("/proc/stat").read_text(), usable_set()), own_cpu_seconds()
    except OSError:
        return None
    if a is None or b is None:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    return ((b[0] - a[0]) - (own_b - own_a) * tck) / ((b[1] - a[1]) / b[2])


def usable_set() -> set[int] | None:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def start_busy() -> subprocess.Popen:
    """A process that keeps one core busy, pinned to the last usable core where pinning exists."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    cpus = usable_set()
    if cpus:
        os.sched_setaffinity(proc.pid, {max(cpus)})
    time.sleep(0.5)  # let it take its core
    return proc


def run_case(args, name: str, load: str, usable: int) -> dict:
    env_vars, overrides = policy(name, usable)
    env = {k: v for k, v in os.environ.items() if k not in WAIT_POLICY_VARIABLES} | env_vars
    sets = [f"run.iterations={args.iterations}", "run.progress=false", *args.set, *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "marft.cli", "train", args.preset, "--out", str(out)]
        cmd += [x for s in sets for x in ("--set", s)]
        before = others_cores()
        busy = start_busy() if load == "busy" else None
        try:
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        if proc.returncode != 0:
            sys.exit(f"{name} {load} failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    threads = [r["torch_threads"] for r in rows if "torch_threads" in r]
    return {
        "policy": name,
        "load": load,
        "wall_s": wall,
        "others_before": before,
        "mean_torch_threads": statistics.mean(threads) if threads else None,
    }


def table(results: list[dict], policies: list[str], loads: list[str]) -> str:
    """Mean wall seconds per policy and load, busy / idle, and torch's mean threads per load."""

    def mean(p: str, load: str, key: str) -> float | None:
        got = [r[key] for r in results if r["policy"] == p and r["load"] == load and r[key] is not None]
        return statistics.mean(got) if got else None

    both = {"idle", "busy"} <= set(loads)
    head = ["policy", *(f"{load} s" for load in loads), *(["busy / idle"] if both else [])]
    head.append("threads (" + " / ".join(loads) + ")")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in policies:
        walls = {load: mean(p, load, "wall_s") for load in loads}
        cells = [p, *(_num(w, ".1f") for w in walls.values())]
        if both:
            cells.append(f"{walls['busy'] / walls['idle']:.2f}x")
        cells.append(" / ".join(_num(mean(p, load, "mean_torch_threads"), ".2f") for load in loads))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=80, help="run.iterations (default 80: the demo's)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of every case (default 2)")
    ap.add_argument("--preset", default="demo", help="preset or YAML file for marft train (default demo)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override")
    ap.add_argument("--smollm2", action="store_true", help="preset smollm2_arith with the local SmolLM2")
    ap.add_argument("--policies", nargs="+", choices=POLICIES, default=list(DEFAULT_POLICIES))
    ap.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    ap.add_argument("--out", type=Path, default=None, help="write every run as JSON here")
    args = ap.parse_args()
    if args.smollm2:
        from marft.models.smollm2 import smollm2_path

        args.preset = "smollm2_arith" if args.preset == "demo" else args.preset
        if not any(s.startswith("model.name=") for s in args.set):
            args.set.append(f"model.name={smollm2_path()}")
    usable = usable_cpus()
    cases = [(p, load) for p in args.policies for load in args.loads]
    print(f"{args.preset}, {args.iterations} iterations, {usable} usable cores, {len(cases)} cases")
    results = []
    for r in range(args.repeats):
        for name, load in cases if r % 2 == 0 else cases[::-1]:
            row = run_case(args, name, load, usable) | {"repeat": r}
            results.append(row)
            before = row["others_before"]
            note = "" if before is None or load == "busy" or before < 0.25 else "  (machine was not idle)"
            print(
                f"repeat {r}: {name:>10} {load:>4}: {row['wall_s']:7.1f} s, torch threads "
                f"{_num(row['mean_torch_threads'], '.2f')}, others before {_num(before, '.2f')} cores{note}",
                flush=True,
            )
    print(table(results, args.policies, args.loads))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"preset": args.preset, "sets": args.set, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
