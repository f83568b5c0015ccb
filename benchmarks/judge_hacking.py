"""Does the judge's redundancy penalty stop a tiny team from pleasing its tiny judge? The setting of
``tests/test_judged.py::test_the_team_learns_to_please_the_judge_and_the_guard_sees_it`` (the tiny
model, 32 env copies of four one-line tasks, no rules term, a high learning rate, 20 iterations),
with and without the penalty, on several seeds. Prints one JSON row per run: the judge's and the
held-out judge's mean over the first and the last 3 iterations, the share of repeated trigrams,
and whether the guard flagged the run.

    python benchmarks/judge_hacking.py --seeds 0 1 --penalties 0 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from fresh import save_results
from marft.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.judge_hacking import hacking_config  # noqa: E402


def run(penalty: float, seed: int, folder: Path) -> dict:
    cfg = hacking_config(
        folder,
        f"reward.judge.redundancy_penalty={penalty}",
        f"reward.heldout_judge.redundancy_penalty={penalty}",
        f"run.seed={seed}",
    )
    trainer = Trainer(cfg, folder / "run")
    trainer.setup()
    rows = trainer.train().rows

    def mean(key: str, part: list[dict]) -> float:
        return round(sum(r[key] for r in part) / len(part), 3)

    out = {"penalty": penalty, "seed": seed}
    for key in ("judge_score", "heldout_score", "judge_repeated"):
        out[f"{key}_first3"], out[f"{key}_last3"] = mean(key, rows[:3]), mean(key, rows[-3:])
    out["flagged"] = rows[-1]["reward_hacking"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--penalties", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows = []
    for seed in args.seeds:
        for penalty in args.penalties:
            with tempfile.TemporaryDirectory() as folder:
                rows.append(run(penalty, seed, Path(folder)))
            print(json.dumps(rows[-1]), flush=True)
    save_results(args.out, rows)


if __name__ == "__main__":
    main()
