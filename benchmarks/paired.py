"""Two ``marft eval`` runs on the same problems, compared problem by problem.

Reads each run's ``transcripts.jsonl`` (the team's samples, not the ablation's), scores each
problem by the share of its samples that were right (greedy evaluation draws one), and prints both
accuracies, the problems that did better in one run than in the other, and the exact two-sided
sign test on those: the probability of a split at least this uneven if training changed nothing.
With one sample per problem this is the exact McNemar test.
Usage::

    python benchmarks/paired.py runs/eval-base runs/eval-trained
"""

from __future__ import annotations

import argparse
import json
from math import comb
from pathlib import Path


def solved(run: Path) -> dict[int, float]:
    """Problem index -> the share of the team's samples that were right."""
    hits: dict[int, list[bool]] = {}
    for line in (run / "transcripts.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t.get("swap_to_base") is None:
            hits.setdefault(t["problem_index"], []).append(bool(t["turns"][-1]["correct"]))
    return {p: sum(h) / len(h) for p, h in hits.items()}


def sign_test(only_a: int, only_b: int) -> float:
    """Two-sided exact sign test (McNemar's, for paired yes/no outcomes): a binomial test of
    ``only_a`` vs ``only_b`` at 1/2."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(before: Path, after: Path) -> dict:
    a, b = solved(before), solved(after)
    common = sorted(a.keys() & b.keys())
    better_before = sum(a[p] > b[p] for p in common)
    better_after = sum(b[p] > a[p] for p in common)
    return {
        "problems": len(common),
        "before": sum(a[p] for p in common) / len(common),
        "after": sum(b[p] for p in common) / len(common),
        "better_before": better_before,
        "better_after": better_after,
        "sign_test_p": sign_test(better_before, better_after),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = p.parse_args()
    print(json.dumps(compare(args.before, args.after)))


if __name__ == "__main__":
    main()
