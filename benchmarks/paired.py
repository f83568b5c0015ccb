"""Two ``marft eval`` runs on the same problems, compared problem by problem.

Reads each run's ``transcripts.jsonl`` (the team's samples, not the ablation's), takes a problem
as solved when its first sample is right (greedy evaluation draws one), and prints both
accuracies, the problems solved by only one run, and the exact two-sided McNemar test on those
discordant pairs: the probability of a split at least this uneven if training changed nothing.
Usage::

    python benchmarks/paired.py runs/eval-base runs/eval-trained
"""

from __future__ import annotations

import argparse
import json
from math import comb
from pathlib import Path


def solved(run: Path) -> dict[int, bool]:
    """Problem index -> whether the team's first sample was right."""
    out: dict[int, bool] = {}
    for line in (run / "transcripts.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t.get("swap_to_base") is None and t.get("sample", 0) == 0:
            out[t["problem_index"]] = bool(t["turns"][-1]["correct"])
    return out


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of ``only_a`` vs ``only_b`` at 1/2."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(before: Path, after: Path) -> dict:
    a, b = solved(before), solved(after)
    common = sorted(a.keys() & b.keys())
    only_before = sum(a[p] and not b[p] for p in common)
    only_after = sum(b[p] and not a[p] for p in common)
    return {
        "problems": len(common),
        "before": sum(a[p] for p in common) / len(common),
        "after": sum(b[p] for p in common) / len(common),
        "only_before": only_before,
        "only_after": only_after,
        "mcnemar_p": mcnemar_exact(only_before, only_after),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = p.parse_args()
    print(json.dumps(compare(args.before, args.after)))


if __name__ == "__main__":
    main()
