"""Does learned routing consult when the problem is hard? (preset ``smollm2_routing``)

Trains the routing math team (a lead answers directly or consults a solver, whose work a verifier
checks before the lead answers), then evaluates the untrained and the trained team greedily on
held-out generated arithmetic and reports, for each, the share of problems where the lead
consulted, overall and by difficulty (one-step vs two-step problems: a problem with k numbers
takes k-1 operations), with the accuracy of each route; and, from training, the consult share per
iteration. Everything lands in ``--out`` (``train/``, ``eval-untrained/``, ``eval-trained/``,
``results.json``, ``table.md``); a finished training run and evaluations are reused. Usage::

    M=$(python -c "from marft.models.smollm2 import smollm2_path; print(smollm2_path())")
    python benchmarks/routing_math.py --set model.name=$M --limit 64 --out runs/routing-math
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from marft.compose import load_config
from marft.envs.math.env import arithmetic_problems
from marft.eval.evaluate import evaluate
from marft.reporting.metrics import read_metrics
from marft.trainer import train
from marft.trainer.checkpoint import latest_checkpoint


def consulted(route: str | None) -> bool:
    """Whether a route went past the lead (the lead's choice was ``solver``)."""
    return bool(route) and route != "lead"


def analyse(eval_dir: Path, steps_of: dict[int, int]) -> dict:
    """Consult share overall and by difficulty, and each route's accuracy, from an evaluation."""
    rows = []
    for line in (eval_dir / "transcripts.jsonl").read_text().splitlines():
        t = json.loads(line)
        last = t["turns"][-1]
        rows.append((steps_of[t["problem_index"]], consulted(last.get("route")), bool(last["correct"])))
    out: dict = {"problems": len(rows), "accuracy": sum(ok for *_, ok in rows) / len(rows)}
    out["consult_share"] = sum(c for _, c, _ in rows) / len(rows)
    for k in sorted({s for s, _, _ in rows}):
        part = [c for s, c, _ in rows if s == k]
        out[f"consult_share_{k}step"] = sum(part) / len(part)
        out[f"problems_{k}step"] = len(part)
    for c, name in ((True, "consulted"), (False, "direct")):
        oks = [ok for _, cc, ok in rows if cc == c]
        out[f"accuracy_{name}"] = sum(oks) / len(oks) if oks else None
        out[f"n_{name}"] = len(oks)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="smollm2_routing")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--heldout-seed", type=int, default=1, help="arithmetic generator seed of the held-out set"
    )
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("runs/routing-math"))
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    run = args.out / "train"
    done = run / "metrics.jsonl"
    if not (done.exists() and len(read_metrics(run)) >= cfg.run.iterations):
        train(cfg, run, resume=done.exists())  # a stopped run continues
    kwargs = cfg.env.kwargs
    heldout = [*args.set, f"env.kwargs.arith_seed={args.heldout_seed}", "sampling.top_k=1"]
    problems = arithmetic_problems(kwargs["arith_count"], args.heldout_seed, kwargs["arith_max"])
    steps_of = {i: len(re.findall(r"\d+", text)) - 1 for i, (text, _) in enumerate(problems)}
    results = {"command": " ".join(["python", *sys.argv]), "training": {}}
    for name, ckpt in (("untrained", None), ("trained", latest_checkpoint(run))):
        out = args.out / f"eval-{name}"
        if not (out / "summary.json").exists():
            evaluate(load_config(args.config, heldout), out, ckpt, limit=args.limit, ablation=False)
        results[name] = analyse(out, steps_of)
    for row in read_metrics(run):
        shares = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("route_share/")}
        results["training"][row["iteration"]] = {
            "consult_share": sum(v for r, v in shares.items() if consulted(r)),
            "episode_return": row["episode_return"],
            "route_invalid": row.get("route_invalid"),
        }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| team | accuracy | consulted | consulted, 1-step | consulted, 2-step | accuracy direct (n) "
        "| accuracy consulted (n) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("untrained", "trained"):
        r = results[name]

        def acc(key: str, n: str, r=r) -> str:
            return "n/a" if r[key] is None else f"{r[key]:.3f} ({r[n]})"

        lines.append(
            f"| {name} | {r['accuracy']:.3f} | {r['consult_share']:.3f} "
            f"| {r.get('consult_share_1step', 0):.3f} "
            f"| {r.get('consult_share_2step', 0):.3f} | {acc('accuracy_direct', 'n_direct')} "
            f"| {acc('accuracy_consulted', 'n_consulted')} |"
        )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
