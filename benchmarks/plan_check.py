"""``marft plan`` against measured memory on CPU: the planner's total for a config, and the peak
resident memory that training it for a few iterations adds to the process.

Each case runs in a fresh subprocess. "Measured" is the peak resident set (``ru_maxrss``) minus the
resident set after imports and env construction, just before the model is built: what the model,
its optimizer, the KV cache and the activations added (plus the allocator's and Python's own
overheads, which the planner does not model). Usage::

    python benchmarks/plan_check.py --out benchmarks/results/plan_check_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

from fresh import run_fresh

CASES = {
    "tiny demo": ("demo", ["env.n_envs=64"]),
    "tiny demo, 256 envs, 8 tokens": ("demo", ["env.n_envs=256", "sampling.max_new_tokens=8"]),
    "smollm2_arith": ("smollm2_arith", ["env.n_envs=24"]),
    "smollm2_arith, micro-batch 4": ("smollm2_arith", ["env.n_envs=24", "algorithm.micro_batch_size=4"]),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(name: str, iters: int) -> dict:
    import tempfile

    from marft.compose import load_config
    from marft.plan import first_env, measure_prompt_tokens, model_shape, plan, tiny_corpus_of
    from marft.trainer import Trainer

    preset, ov = CASES[name]
    ov = [*ov, "run.progress=false", "run.loggers=[]", "run.report=false", f"run.iterations={iters}"]
    if preset == "smollm2_arith":
        from marft.models.smollm2 import smollm2_path

        ov.append(f"model.name={smollm2_path()}")
    cfg = load_config(preset, ov)
    env = first_env(cfg)
    prompt = measure_prompt_tokens(cfg, env)
    planned = plan(cfg, model_shape(cfg, tiny_corpus_of(cfg, env)), prompt)[0]
    before = rss_mb()
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run")
    trainer.setup()
    after_setup = rss_mb()
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "case": name,
        "prompt_tokens": prompt,
        "planned_mb": {k: v / 2**20 for k, v in {**planned.items, **planned.phases}.items()},
        "planned_total_mb": planned.total / 2**20,
        "rss_before_model_mb": before,
        "rss_after_setup_mb": after_setup,
        "peak_rss_mb": peak,
        "measured_mb": peak - before,
        "planned_over_measured": planned.total / 2**20 / (peak - before),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES))
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.iters)))
        return
    rows = []
    for name in args.cases:
        row = run_fresh(__file__, "--one", name, "--iters", str(args.iters))
        rows.append(row)
        print(
            f"{name:<32} planned {row['planned_total_mb']:8.1f} MB  measured {row['measured_mb']:8.1f} MB  "
            f"ratio {row['planned_over_measured']:.2f}",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
