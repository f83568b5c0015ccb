"""One ``marft train`` command run by several checkouts (or settings) of marft, alternating, on one
machine: wall time and per-phase seconds per iteration, side by side.

A *case* is ``NAME=PATH`` or ``NAME=PATH;KEY=VALUE;...``: the checkout at ``PATH`` (its ``src`` on
``PYTHONPATH``, so an old commit's ``git worktree`` needs no install) with extra ``--set``
overrides. Every round runs every case once, in reverse order on odd rounds, each in a fresh
process with a fresh output folder; the command's wall time is measured around the whole process
(imports, model load and report included). Per case it prints, over the rounds: the wall times,
then per iteration the median of ``time_iter_s``, ``time_generate_s`` and ``time_policy_s`` from
``metrics.jsonl`` (with the speed-up of each over the first case's) and each iteration's generated
tokens. Results go to ``--out`` as JSON.

Before each case the CPU that other processes used over one second is printed: a figure well above
0 means the machine was not idle and that round does not compare.

    git worktree add /tmp/wt/f062cd8 f062cd8
    M=$(python -c "from marft.models.smollm2 import smollm2_path; print(smollm2_path())")
    python benchmarks/side_by_side.py --case old=/tmp/wt/f062cd8 --case new=. --rounds 2 \\
        -- smollm2_arith --set model.name=$M --set run.iterations=3
    python benchmarks/side_by_side.py --case old=/tmp/wt/4c90ca1 --case new=. -- demo
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from threads import others_cores  # noqa: E402

PHASES = ("time_iter_s", "time_generate_s", "time_policy_s")
"""The per-iteration timings compared (every checkout since issue 10 logs them)."""


@dataclass(frozen=True)
class Case:
    """One side of the comparison: a checkout and its extra overrides."""

    name: str
    path: Path
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Case:
        name, _, rest = text.partition("=")
        path, *overrides = rest.split(";")
        if not name or not path:
            raise SystemExit(f"--case {text!r}: expected NAME=PATH or NAME=PATH;KEY=VALUE;...")
        checkout = Path(path).resolve()
        if not (checkout / "src" / "marft").is_dir():
            raise SystemExit(f"--case {text!r}: {checkout} has no src/marft (a marft checkout?)")
        return cls(name, checkout, tuple(o for o in overrides if o))


@dataclass
class Runs:
    """What the rounds measured for one case."""

    wall_s: list[float] = field(default_factory=list)
    iterations: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float:
        values = [row[key] for row in self.iterations if key in row]
        return statistics.median(values) if values else float("nan")


def run_case(case: Case, command: list[str]) -> tuple[float, list[dict[str, float]]]:
    """One ``marft train`` process of ``case``: its wall time and its metrics rows."""
    with tempfile.TemporaryDirectory() as out:
        args = [sys.executable, "-c", "from marft.cli import main; main()", "train", *command]
        for override in case.overrides:
            args += ["--set", override]
        args += ["--set", "run.progress=false", "--out", out]
        env = {**os.environ, "PYTHONPATH": str(case.path / "src")}
        start = time.perf_counter()
        subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    keep = (*PHASES, "episode_return")
    out = [{k: float(row[k]) for k in keep if isinstance(row.get(k), (int, float))} for row in rows]
    before = 0
    for row, metrics in zip(rows, out, strict=True):  # generated_tokens counts from the start
        if "generated_tokens" in row:
            metrics["tokens"] = float(row["generated_tokens"] - before)
            before = row["generated_tokens"]
    return wall, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", dest="cases", action="append", required=True, type=Case.parse)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/side_by_side.json"))
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then marft train's arguments")
    args = parser.parse_args()
    command = [a for a in args.command if a != "--"] or ["demo"]
    runs = {case.name: Runs() for case in args.cases}
    for round_ in range(args.rounds):
        order = args.cases if round_ % 2 == 0 else args.cases[::-1]
        for case in order:
            print(f"round {round_} {case.name}: other processes busy {others_cores()} cores", flush=True)
            wall, rows = run_case(case, command)
            runs[case.name].wall_s.append(wall)
            runs[case.name].iterations.extend(rows)
            print(f"  wall {wall:.1f} s, {len(rows)} iterations", flush=True)
    first = runs[args.cases[0].name]
    for case in args.cases:
        r = runs[case.name]
        cells = [f"{key} {r.median(key):.2f} ({first.median(key) / r.median(key):.2f}x)" for key in PHASES]
        tokens = [int(row["tokens"]) for row in r.iterations if "tokens" in row]
        shown = tokens if len(tokens) <= 12 else f"{min(tokens)}-{max(tokens)}, {sum(tokens)} in all"
        walls = [round(w, 1) for w in r.wall_s]
        print(f"{case.name}: wall {walls}; median {'; '.join(cells)}; tokens per iteration {shown}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "cases": {c.name: {**asdict(c), "path": str(c.path)} for c in args.cases}}
    record["runs"] = {name: asdict(r) for name, r in runs.items()}
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
