"""Does the team beat one agent? Six rows at matched compute, on held-out problems.

For one team config (a preset or YAML, with a problem-set env such as ``math``) and one seed or
more, this trains and evaluates:

1. one agent, untrained (the team's graded agent alone, ``--single-prompt`` as its role prompt);
2. that agent trained with the team's algorithm;
3. the team, untrained;
4. the team trained with one shared adapter (``lora.shared: true``);
5. the team trained with one adapter per role;
6. one agent, untrained, majority vote over k samples, k chosen so that its generated tokens per
   problem match row 5's (rounded; the table gives both). Envs whose answers are programs (``code``)
   give nothing to vote on: the row says so and its test is left out.

``--variant "LABEL: KEY=VALUE; KEY=VALUE"`` (repeatable) adds rows 7, 8, ...: the per-role team
with those overrides (a credit-assignment lever, e.g. ``algorithm.group_baseline=nested;
algorithm.branching=[2,2]``, or a frozen planner), trained at row 5's budget like rows 2 and 4.
Every trained team row is compared with row 2 (and each variant with row 5) problem by problem.

Row 5 trains for ``--team-iterations``; the tokens it generated (every agent's sampled training
tokens, ``generated_tokens`` in its ``metrics.jsonl``) are the budget of rows 2 and 4
(``run.token_budget``: each stops after the iteration that reaches it, so it may overshoot by
less than one iteration; the table gives what each really used). Rows 1-5 are evaluated greedily
on the first ``--limit`` held-out problems (``--heldout`` overrides, e.g. another generator
seed), row 6 samples at the config's temperature. Accuracy is over problems (each scored by its
mean over seeds) with a 95% Wilson interval (evaluation noise only: seeds are listed, their
spread is the training noise);
the paired tests compare rows 2 and 5 and rows 5 and 6 problem by problem (seed-averaged) with
the exact two-sided sign test (McNemar's for one sample).

Everything lands in ``--out``: each row's run and evaluation, ``results.json`` and
``table.md``. Finished runs and evaluations made with the same settings are reused, so a stopped
benchmark continues where it was (one made with other settings stops it, saying which). Usage
(SmolLM2 on generated arithmetic, docs/results.md)::

    M=$(python -c "from marft.models.smollm2 import smollm2_path; print(smollm2_path())")
    python benchmarks/team_vs_single.py smollm2_arith --set model.name=$M \\
        --single-prompt "Solve the math problem step by step. Keep it short and end with: The answer is N." \\
        --heldout env.kwargs.arith_seed=1 --team-iterations 10 --limit 200 --out runs/team-vs-single
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from marft.compose import load_config, validate
from marft.config import Config, from_dict, to_dict
from marft.eval.evaluate import Evaluator, ProblemResult, majority
from marft.trainer.checkpoint import latest_checkpoint
from marft.trainer.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import sign_test  # noqa: E402

ROWS = {
    1: "one agent, untrained",
    2: "one agent, RL",
    3: "team, untrained",
    4: "team, RL, one shared adapter",
    5: "team, RL, adapter per role",
    6: "one agent, untrained, majority of k",
}


def single_config(team: Config, role: str | None, prompt: str | None) -> Config:
    """The team's config with one agent: ``role`` (default: the graded agent, else the last),
    seeing only the env, with ``prompt`` as its role prompt (default: its own)."""
    agents = team.team.agents
    graded = [a for a in agents if a.graded]
    agent = next((a for a in agents if a.role == role), None) if role else (graded or agents)[-1]
    if agent is None:
        raise SystemExit(f"no agent {role!r} in the team; agents: {', '.join(a.role for a in agents)}")
    data = to_dict(team)
    data["team"]["agents"] = [
        {
            **to_dict(agent),
            "observes": [],
            "graded": True,
            "trainable": True,
            "system_prompt": prompt if prompt is not None else agent.system_prompt,
        }
    ]
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``dotted.key=value`` overrides applied (and validated again)."""
    from marft.config import apply_override

    data = to_dict(cfg)
    for ov in overrides:
        apply_override(data, ov)
    out = from_dict(Config, data)
    validate(out)
    return out


def reuse(path: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """What ``path`` cached, if it was made with ``spec`` (the config and arguments of its row);
    None when there is nothing yet. A cache made with other settings stops the benchmark: its
    numbers would silently answer another question."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not _same_spec(data.get("spec"), json.loads(json.dumps(spec))):
        raise SystemExit(
            f"{path} was made with other settings; delete it (or its folder) or give another --out"
        )
    return data


def _same_spec(old: Any, new: Any) -> bool:
    """Whether a cached row's spec is ``new``'s: equal, but for config keys added since the cache
    was made whose value is empty (``models: {}``, an agent's ``base: null``): those runs had the
    keys' default behaviour."""
    if isinstance(old, dict) and isinstance(new, dict):
        added = set(new) - set(old)
        if set(old) - set(new) or any(new[k] not in (None, {}, []) for k in added):
            return False
        return all(_same_spec(old[k], new[k]) for k in old)
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_same_spec(a, b) for a, b in zip(old, new, strict=True))
    return old == new


def train_row(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train (or reuse a finished run in ``run_dir``); its checkpoint, tokens and seconds."""
    rows_file = run_dir / "metrics.jsonl"
    done = run_dir / "done.json"
    spec = {"config": to_dict(cfg)}
    cached = reuse(done, spec)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    resume = latest_checkpoint(run_dir) is not None
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to continue from
    trainer = Trainer(cfg, run_dir, resume=resume)
    trainer.setup()
    trainer.train()
    rows = [json.loads(x) for x in rows_file.read_text().splitlines()]
    out = {
        "checkpoint": str(latest_checkpoint(run_dir)),
        "iterations": len(rows),
        "generated_tokens": rows[-1]["generated_tokens"],
        "train_s": rows[-1]["time_s"],
        "wall_s": time.perf_counter() - t0,
        "return_first": rows[0]["episode_return"],
        "return_last": rows[-1]["episode_return"],
        "spec": spec,
    }
    done.write_text(json.dumps(out))
    return out


def eval_row(
    cfg: Config,
    checkpoint: str | None,
    out: Path,
    limit: int,
    samples: int,
    greedy: bool,
    swap_to_base: str | None = None,
) -> dict:
    """Evaluate (or reuse ``out``): per problem 1/0 (greedy: the sample; else the majority
    answer's sample) and the tokens generated per problem. ``swap_to_base`` names an agent that
    acts with its adapter off (the per-agent ablation)."""
    spec = {
        "config": to_dict(cfg),
        "checkpoint": checkpoint,
        "limit": limit,
        "samples": samples,
        "greedy": greedy,
    }
    if swap_to_base is not None:
        spec["swap_to_base"] = swap_to_base
    cached = reuse(out, spec)
    if cached is not None:
        return cached
    if greedy:
        cfg = with_overrides(cfg, ["sampling.top_k=1"])
    t0 = time.perf_counter()
    ev = Evaluator(cfg, checkpoint, samples=samples, limit=limit, progress=True)
    results: list[ProblemResult] = ev.run(swap_to_base=swap_to_base).results
    scores: list[float] | None = []
    if samples > 1 and not any(a is not None for r in results for a in r.answers):
        scores = None  # no answers to vote on (a program is judged, not compared): no row 6
    for r in results if scores is not None else []:
        if samples == 1:
            scores.append(float(r.correct[0]))
        else:
            top = majority(r.answers, ev.same_answer)
            scores.append(float(top is not None and r.correct[top]))
    data = {
        "scores": scores,
        "tokens_per_problem": sum(sum(r.tokens) for r in results) / len(results),
        "samples": samples,
        "eval_s": time.perf_counter() - t0,
        "spec": spec,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return data


def wilson(hits: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``hits / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired(a: list[list[float]], b: list[list[float]]) -> dict[str, float]:
    """Per-problem sign test between two rows (each: per seed, per problem scores)."""
    mean_a = [sum(s[i] for s in a) / len(a) for i in range(len(a[0]))]
    mean_b = [sum(s[i] for s in b) / len(b) for i in range(len(b[0]))]
    better_a = sum(x > y for x, y in zip(mean_a, mean_b, strict=True))
    better_b = sum(y > x for x, y in zip(mean_a, mean_b, strict=True))
    return {"better_first": better_a, "better_second": better_b, "p": sign_test(better_a, better_b)}


def parse_variants(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``"LABEL: KEY=VALUE; KEY=VALUE"`` -> ``(LABEL, [KEY=VALUE, ...])`` (``;`` separates overrides:
    a value may hold commas)."""
    out = []
    for spec in specs:
        label, sep, rest = spec.partition(":")
        overrides = [o.strip() for o in rest.split(";") if o.strip()]
        if not sep or not label.strip() or not overrides or any("=" not in o for o in overrides):
            raise SystemExit(f"--variant {spec!r}: give 'LABEL: KEY=VALUE; KEY=VALUE'")
        out.append((label.strip(), overrides))
    return out


def slug(label: str) -> str:
    """A folder name for a variant's label."""
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


def run_seed(args, team: Config, single: Config, seed: int, base_evals: dict) -> dict[int, dict]:
    """Rows 2, 4, 5, 6 and the variants' (7, 8, ...) of one seed (training and evaluation); rows 1
    and 3 are ``base_evals``."""
    root = args.out / f"seed{seed}"
    common = [f"run.seed={seed}", "run.report=false", f"run.checkpoint_every={args.checkpoint_every}"]
    held = args.heldout
    per_role = with_overrides(team, [*common, f"run.iterations={args.team_iterations}"])
    r5 = train_row(per_role, root / "team-per-role")
    budget = [
        *common,
        f"run.iterations={args.team_iterations * 50}",
        f"run.token_budget={r5['generated_tokens']}",
    ]
    r4 = train_row(with_overrides(team, [*budget, "lora.shared=true"]), root / "team-shared")
    r2 = train_row(with_overrides(single, budget), root / "single-rl")
    trained = [(5, team, r5), (4, with_overrides(team, ["lora.shared=true"]), r4), (2, single, r2)]
    for i, (label, overrides) in enumerate(parse_variants(args.variant)):
        run = train_row(with_overrides(team, [*budget, *overrides]), root / f"team-{slug(label)}")
        trained.append((7 + i, with_overrides(team, overrides), run))
    rows: dict[int, dict] = {}
    for n, cfg, run in trained:
        rows[n] = {
            **run,
            **eval_row(
                with_overrides(cfg, held), run["checkpoint"], root / f"eval-{n}.json", args.limit, 1, True
            ),
        }
    k = max(1, round(rows[5]["tokens_per_problem"] / base_evals[1]["tokens_per_problem"]))
    sampled = with_overrides(single, [*held, f"run.seed={seed}"])
    rows[6] = {"k": k, **eval_row(sampled, None, root / f"eval-6-k{k}.json", args.limit, k, False)}
    return rows


def row_names(variants: list[str]) -> dict[int, str]:
    """Every row's name, the variants' after the six."""
    names = dict(ROWS)
    for i, (label, _) in enumerate(parse_variants(variants)):
        names[7 + i] = f"team, RL, adapter per role, {label}"
    return names


def summarize(
    per_seed: list[dict[int, dict]], seeds: list[int], names: dict[int, str] = ROWS
) -> dict[str, Any]:
    """The table's numbers: per row accuracy (per seed, and the mean over seeds) with its 95%
    interval, tokens, seconds; the paired tests.

    Every seed is evaluated on the same problems (and rows 1 and 3 do not depend on the seed), so
    the interval is over the ``limit`` problems, each scored by its mean over seeds: seeds do not
    count as more problems."""
    table = {}
    for n, name in names.items():
        runs = [s[n] for s in per_seed]
        if any(r["scores"] is None for r in runs):
            table[n] = {"row": name, "accuracy": None, "k": runs[0].get("k")}
            continue
        n_problems = len(runs[0]["scores"])
        hits = sum(sum(r["scores"]) for r in runs) / len(runs)
        table[n] = {
            "row": name,
            "accuracy": hits / n_problems,
            "ci95": wilson(hits, n_problems),
            "per_seed": [sum(r["scores"]) / len(r["scores"]) for r in runs],
            "train_tokens": _mean([r.get("generated_tokens") for r in runs]),
            "train_iterations": _mean([r.get("iterations") for r in runs]),
            "train_s": _mean([r.get("train_s") for r in runs]),
            "eval_tokens_per_problem": _mean([r["tokens_per_problem"] for r in runs]),
            "eval_s": _mean([r["eval_s"] for r in runs]),
            "k": runs[0].get("k"),
        }
    scores = {n: [s[n]["scores"] for s in per_seed] for n in names}
    tests = {"2 vs 5": paired(scores[2], scores[5])}
    if table[6]["accuracy"] is not None:
        tests["5 vs 6"] = paired(scores[5], scores[6])
    for n in names:
        if n > 6:
            tests[f"2 vs {n}"] = paired(scores[2], scores[n])
            tests[f"5 vs {n}"] = paired(scores[5], scores[n])
    return {"seeds": seeds, "rows": table, "paired": tests}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table and the paired tests."""
    lines = [
        "| # | row | accuracy | 95% CI | per seed | training tokens (iterations) | eval tokens / problem |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in summary["rows"].items():
        name = r["row"] + (f" (k={r['k']})" if r["k"] else "")
        if r["accuracy"] is None:
            lines.append(f"| {n} | {name} | no answers to vote on (programs are run, not compared) | | | | |")
            continue
        tokens = (
            "-" if r["train_tokens"] is None else f"{r['train_tokens']:.0f} ({r['train_iterations']:.0f})"
        )
        seeds = ", ".join(f"{a:.3f}" for a in r["per_seed"])
        lo, hi = r["ci95"]
        lines.append(
            f"| {n} | {name} | {r['accuracy']:.3f} | {lo:.3f}-{hi:.3f} | {seeds} | {tokens} | "
            f"{r['eval_tokens_per_problem']:.1f} |"
        )
    lines.append("")
    for pair, t in summary["paired"].items():
        a, b = pair.split(" vs ")
        lines.append(
            f"- rows {pair}: {t['better_first']} problems better in row {a}, "
            f"{t['better_second']} in row {b}; "
            f"exact sign test p = {t['p']:.3g}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the team: a preset name or a YAML file (a problem-set env)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (all rows)"
    )
    p.add_argument(
        "--heldout", action="append", default=[], metavar="KEY=VALUE", help="override for evaluation only"
    )
    p.add_argument("--single-role", default=None, help="the agent that plays alone (default: the graded one)")
    p.add_argument("--single-prompt", default=None, help="its role prompt alone (default: its team prompt)")
    p.add_argument(
        "--team-iterations", type=int, default=10, help="row 5's iterations; its tokens set the budget"
    )
    p.add_argument("--limit", type=int, default=200, help="held-out problems evaluated")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'LABEL: KEY=VALUE; ...'",
        help="a per-role team row with these overrides, at row 5's budget (repeatable)",
    )
    p.add_argument("--checkpoint-every", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/team-vs-single"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    team = load_config(args.config, args.set)
    single = single_config(team, args.single_role, args.single_prompt)
    base_evals = {
        1: eval_row(
            with_overrides(single, args.heldout), None, args.out / "eval-1.json", args.limit, 1, True
        ),
        3: eval_row(with_overrides(team, args.heldout), None, args.out / "eval-3.json", args.limit, 1, True),
    }
    per_seed = [{**base_evals, **run_seed(args, team, single, s, base_evals)} for s in args.seeds]
    summary = summarize(per_seed, args.seeds, row_names(args.variant))
    summary["wall_s"] = time.perf_counter() - t0
    summary["command"] = shlex.join(sys.argv if argv is None else ["team_vs_single.py", *argv])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    (args.out / "table.md").write_text(markdown(summary))
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
