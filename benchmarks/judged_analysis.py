"""What does the judge reward? Reads a ``marft eval`` folder of judged work and prints, over every
judged response (trained team, untrained team, ablations): the judge score's correlation with
length, with each rule check and with the held-out judge; the mean score of responses that keep
or break each rule; and the highest- and lowest-scored responses.

    marft eval --checkpoint runs/slides-smol --split heldout --samples 4 --out runs/slides-smol/eval
    python benchmarks/judged_analysis.py runs/slides-smol/eval [--examples 3]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson's correlation of two equally long lists (nan when one is constant)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx and sy else float("nan")


def paired(rows: list[dict], key: str) -> str:
    """Trained minus untrained ``key``, per problem (mean over its samples), paired: the mean
    difference, its standard error over problems, and on how many problems the trained team led."""
    by: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        by.setdefault((r["team"], r["problem"]), []).append(r[key])
    problems = sorted(p for team, p in by if team == "trained" and ("untrained", p) in by)
    if len(problems) < 2:
        return "-"
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    diffs = [mean(by[("trained", p)]) - mean(by[("untrained", p)]) for p in problems]
    mu = mean(diffs)
    se = math.sqrt(sum((x - mu) ** 2 for x in diffs) / (len(diffs) - 1) / len(diffs))
    ahead = sum(x > 0 for x in diffs)
    return f"{mu:+.4f} +- {se:.4f} (standard error over {len(diffs)} problems; trained ahead on {ahead})"


def responses(eval_dir: Path) -> list[dict]:
    """One record per judged response: team, score, held-out score, words, rules, text."""
    out = []
    for line in (eval_dir / "transcripts.jsonl").read_text().splitlines():
        t = json.loads(line)
        turn = t["turns"][-1]
        info = turn["info"]
        role = info.get("judged_role")
        text = next((a["response"] for a in reversed(turn["agents"]) if a["role"] == role), "")
        team = (
            "untrained"
            if t.get("untrained")
            else (f"{t['swap_to_base']}->base" if t.get("swap_to_base") else "trained")
        )
        out.append(
            {
                "team": team,
                "problem": t["problem_index"],
                "text": text,
                "rules": info["rules"],
                **info["metrics"],
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_dir", type=Path)
    p.add_argument("--examples", type=int, default=3, help="highest- and lowest-scored responses shown")
    args = p.parse_args()
    rows = responses(args.eval_dir)
    score = [r["judge_score"] for r in rows]
    print(f"{len(rows)} judged responses ({', '.join(sorted({r['team'] for r in rows}))})")
    print(
        "corr(judge score, log words)        "
        f"{pearson(score, [math.log1p(r['response_words']) for r in rows]):+.3f}"
    )
    if all("heldout_score" in r for r in rows):
        print(
            f"corr(judge score, held-out score)   {pearson(score, [r['heldout_score'] for r in rows]):+.3f}"
        )
    print(f"corr(judge score, every rule kept)  {pearson(score, [r['rules_pass'] for r in rows]):+.3f}")
    for rule in sorted({k for r in rows for k in r["rules"]}):
        kept = [r["judge_score"] for r in rows if r["rules"].get(rule)]
        broken = [r["judge_score"] for r in rows if rule in r["rules"] and not r["rules"][rule]]
        mean = lambda xs: f"{sum(xs) / len(xs):.3f} (n={len(xs)})" if xs else "-"  # noqa: E731
        print(f"rule {rule:<10} kept: mean score {mean(kept):<18} broken: {mean(broken)}")
    print("\ntrained minus untrained, paired by problem:")
    for key in ("judge_score", "heldout_score", "response_words"):
        if all(key in r for r in rows):
            print(f"  {key:<15} {paired(rows, key)}")
    teams = sorted({r["team"] for r in rows})
    rules = sorted({k for r in rows for k in r["rules"]})
    print("\nshare of responses keeping each rule, per team:")
    print(f"{'team':<18}" + "".join(f"{k:>11}" for k in rules))
    for team in teams:
        mine = [r for r in rows if r["team"] == team]
        print(
            f"{team:<18}"
            + "".join(f"{sum(bool(r['rules'].get(k)) for r in mine) / len(mine):>11.3f}" for k in rules)
        )
    ranked = sorted(rows, key=lambda r: r["judge_score"])
    for title, chosen in (("highest", ranked[::-1][: args.examples]), ("lowest", ranked[: args.examples])):
        for r in chosen:
            kept = ",".join(k for k, v in r["rules"].items() if v) or "none"
            print(
                f"\n--- {title}: score {r['judge_score']:.3f} ({r['team']}, "
                f"{r['response_words']:.0f} words, rules kept: {kept})"
            )
            print(r["text"][:600])


if __name__ == "__main__":
    main()
