"""One micro-batch's forward and backward on SmolLM2-135M: peak memory and seconds, against the
micro-batch's tokens, the logit chunk and gradient checkpointing.

Each case runs in a fresh process: it builds the team model (LoRA r=8 on q/v, fp32, CPU), then
takes the action log-probs and entropies of ``rows`` random sequences of ``prompt`` + 64 tokens
with the adapter active (temperature 0.5, top-k 50, W1's sampling), and backpropagates their sum.
"Added" is the process's peak resident memory during that step minus its resident memory just
before (the kernel's high-water mark, reset through ``/proc/self/clear_refs``). Usage::

    python benchmarks/backward_memory.py --out benchmarks/results/backward_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fresh import run_fresh, save_results

CASES = [  # rows, prompt tokens, logit chunk (0: none), gradient checkpointing
    (4, 192, 0, False),
    (4, 192, 512, False),
    (16, 192, 512, False),
    (4, 960, 0, False),
    (4, 960, 512, False),
    (1, 960, 512, False),
    (4, 960, 512, True),
]


def run_one(rows: int, prompt: int, chunk: int, checkpointing: bool) -> dict:
    import torch

    from marft.config import LoraSettings, ModelConfig
    from marft.models import SamplingParams, SequenceBatch, TeamModel, load_base
    from marft.models.smollm2 import smollm2_path
    from marft.trainer.phases import PhaseMeter, rss_mb

    base, tok = load_base(ModelConfig(name=smollm2_path()))
    lora = LoraSettings(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    model = TeamModel(
        base,
        tok,
        ["agent"],
        lora,
        logit_chunk_tokens=chunk,
        gradient_checkpointing=checkpointing,
    )
    g = torch.Generator().manual_seed(0)
    ones = lambda n: torch.ones(rows, n, dtype=torch.long)  # noqa: E731
    batch = SequenceBatch(torch.randint(100, 40000, (rows, prompt), generator=g), ones(prompt),
                          torch.randint(100, 40000, (rows, 64), generator=g), ones(64))  # fmt: skip
    meter = PhaseMeter()
    with model.adapter("agent"):
        model.policy.train()
        before = rss_mb()
        t0 = time.perf_counter()
        with meter.phase("step"):
            lp, ent = model.action_logprobs(batch, SamplingParams(temperature=0.5, top_k=50))
            lp.sum().backward()
        seconds = time.perf_counter() - t0
    return {
        "rows": rows,
        "prompt": prompt,
        "tokens": rows * (prompt + 64),
        "logit_chunk_tokens": chunk,
        "gradient_checkpointing": checkpointing,
        "added_mb": round(meter.peak_mb["step"] - before),
        "seconds": round(seconds, 2),
        "ms_per_token": round(1000 * seconds / (rows * (prompt + 64)), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", nargs=4, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.one:
        rows, prompt, chunk, ckpt = args.one
        print(json.dumps(run_one(int(rows), int(prompt), int(chunk), ckpt == "1")))
        return
    results = []
    print("| rows x tokens | logit chunk | checkpointing | added memory | seconds | ms / token |")
    print("|---|---|---|---|---|---|")
    for rows, prompt, chunk, ckpt in CASES:
        r = run_fresh(sys.argv[0], "--one", str(rows), str(prompt), str(chunk), str(int(ckpt)))
        results.append(r)
        print(
            f"| {rows} x {prompt + 64} = {r['tokens']} | {chunk or 'none'} | {'on' if ckpt else 'off'} "
            f"| {r['added_mb']} MB | {r['seconds']} | {r['ms_per_token']} |",
            flush=True,
        )
    save_results(args.out, results)


if __name__ == "__main__":
    main()
