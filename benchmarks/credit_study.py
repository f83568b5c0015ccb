"""Which credit-assignment lever mends the per-role team? (issue 33, docs/results.md)

A cut of ``team_vs_single.py`` that trains only what the question needs, for one team config and
one seed or more:

* row 5: the team with an adapter per role, trained for ``--team-iterations``;
* rows 7, 8, ...: the per-role team with each ``--variant``'s overrides (a frozen planner, nested
  groups, ...), each stopped at row 5's budget of generated training tokens;
* row 5 again with each agent in turn swapped back to the base model (its adapter off): does the
  team score higher without an agent's training?
* row 3: the team untrained;
* with ``--single-prompt``, row 2: the graded agent alone with that role prompt, trained at row
  5's budget.

Every row is evaluated greedily on the first ``--limit`` held-out problems (``--heldout``
overrides) and compared with row 5 problem by problem (exact two-sided sign test). The folder
layout and the cached results are ``team_vs_single.py``'s: a later full run with the same
``--out`` and settings reuses these rows. A row's ``done.json`` and ``eval-*.json`` are all a
later run needs of it (row 5's checkpoint only until its ablations are evaluated, which comes
first), so the study spans sessions and machines by their small files: copy them (not the
checkpoints) into the repository, ``benchmarks/results/credit-study``, and back into ``--out``
before the next run. Usage::

    M=$(python -c "from marft.models.smollm2 import smollm2_path; print(smollm2_path())")
    python benchmarks/credit_study.py smollm2_arith --set model.name=$M \\
        --heldout env.kwargs.arith_seed=1 --team-iterations 12 --limit 200 --seeds 0 \\
        --variant "planner frozen: team.agents.0.trainable=false" \\
        --variant "nested 2x2: algorithm.group_baseline=nested; algorithm.branching=[2,2]" \\
        --out runs/credit-study
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from marft.compose import load_config  # noqa: E402
from marft.config import Config  # noqa: E402
from team_vs_single import (  # noqa: E402
    eval_row,
    paired,
    parse_variants,
    single_config,
    slug,
    train_row,
    wilson,
    with_overrides,
)


def run_seed(args: argparse.Namespace, team: Config, seed: int) -> dict[str, dict[str, Any]]:
    """Row 5, its ablations and the variants of one seed, each trained (or reused) and evaluated."""
    root = args.out / f"seed{seed}"
    common = [f"run.seed={seed}", "run.report=false", f"run.checkpoint_every={args.checkpoint_every}"]
    held = args.heldout
    per_role = with_overrides(team, [*common, f"run.iterations={args.team_iterations}"])
    r5 = train_row(per_role, root / "team-per-role")
    ev_cfg = with_overrides(team, held)
    rows = {
        "per role": {**r5, **eval_row(ev_cfg, r5["checkpoint"], root / "eval-5.json", args.limit, 1, True)}
    }
    # Row 5's ablations right after it: once they are done its checkpoint is no longer needed, so
    # a study carried to another machine as its small files (see the docstring) goes on from there.
    for agent in team.team.agents:
        out = root / f"eval-5-base-{slug(agent.role)}.json"
        rows[f"per role, {agent.role} on the base"] = eval_row(
            ev_cfg, r5["checkpoint"], out, args.limit, 1, True, swap_to_base=agent.role
        )
    rows["untrained"] = eval_row(ev_cfg, None, args.out / "eval-3.json", args.limit, 1, True)
    budget = [
        *common,
        f"run.iterations={args.team_iterations * 50}",
        f"run.token_budget={r5['generated_tokens']}",
    ]
    if args.single_prompt is not None:  # row 2: the graded agent alone, at the same budget
        single = single_config(team, None, args.single_prompt)
        run = train_row(with_overrides(single, budget), root / "single-rl")
        held_single = with_overrides(single, held)
        rows["one agent"] = {
            **run,
            **eval_row(held_single, run["checkpoint"], root / "eval-2.json", args.limit, 1, True),
        }
    for i, (label, overrides) in enumerate(parse_variants(args.variant)):
        run = train_row(with_overrides(team, [*budget, *overrides]), root / f"team-{slug(label)}")
        cfg = with_overrides(team, [*overrides, *held])
        rows[label] = {
            **run,
            **eval_row(cfg, run["checkpoint"], root / f"eval-{7 + i}.json", args.limit, 1, True),
        }
    return rows


def summarize(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per row: accuracy (problems scored by their mean over seeds) with its 95% Wilson interval,
    per-seed accuracies, training tokens and returns; each row against row 5, paired."""
    table = {}
    for name in per_seed[0]:
        runs = [s[name] for s in per_seed]
        n = len(runs[0]["scores"])
        hits = sum(sum(r["scores"]) for r in runs) / len(runs)
        table[name] = {
            "accuracy": hits / n,
            "ci95": wilson(hits, n),
            "per_seed": [sum(r["scores"]) / n for r in runs],
            "train_tokens": [r.get("generated_tokens") for r in runs],
            "return_first_last": [(r.get("return_first"), r.get("return_last")) for r in runs],
            "eval_tokens_per_problem": sum(r["tokens_per_problem"] for r in runs) / len(runs),
        }
        if name != "per role":
            table[name]["vs per role"] = paired(
                [r["scores"] for r in runs], [s["per role"]["scores"] for s in per_seed]
            )
    return table


def markdown(table: dict[str, Any]) -> str:
    lines = [
        "| row | held-out accuracy | 95% CI | per seed | training tokens | better / worse than row 5 | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in table.items():
        tokens = ", ".join(f"{t:,}" for t in r["train_tokens"] if t is not None) or "-"
        vs = r.get("vs per role")
        split = f"{vs['better_first']} / {vs['better_second']}" if vs else "-"
        p = f"{vs['p']:.2g}" if vs else "-"
        seeds = ", ".join(f"{a:.3f}" for a in r["per_seed"])
        lo, hi = r["ci95"]
        lines.append(
            f"| {name} | {r['accuracy']:.3f} | {lo:.3f}-{hi:.3f} | {seeds} | {tokens} | {split} | {p} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the team: a preset name or a YAML file (a problem-set env)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--heldout", action="append", default=[], metavar="KEY=VALUE", help="evaluation only")
    p.add_argument("--team-iterations", type=int, default=12, help="row 5's iterations: the budget")
    p.add_argument("--limit", type=int, default=200, help="held-out problems evaluated")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variant", action="append", default=[], metavar="'LABEL: KEY=VALUE; ...'")
    p.add_argument(
        "--single-prompt",
        default=None,
        help="also train the graded agent alone at row 5's budget (row 2), with this role prompt",
    )
    p.add_argument("--checkpoint-every", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/credit-study"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    team = load_config(args.config, args.set)
    table = summarize([run_seed(args, team, s) for s in args.seeds])
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(sys.argv if argv is None else ["credit_study.py", *argv])
    result = {"rows": table, "seeds": args.seeds, "wall_s": time.perf_counter() - t0, "command": command}
    (args.out / "credit.json").write_text(json.dumps(result, indent=2))
    (args.out / "credit.md").write_text(markdown(table))
    print(markdown(table))
    return result


if __name__ == "__main__":
    main()
