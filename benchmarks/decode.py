"""The HF backend's decode paths side by side: ``sampling.decode`` ``eager`` against ``fast``.

One team model (a preset's, ``--set`` as ``marft train`` takes), its adapters given random
non-zero LoRA B matrices (a fresh adapter's are zero, which would hide the LoRA work), and one
fixed batch of ``--rows`` random prompts of ``--prompt`` tokens (one row left-padded), each
sampling exactly ``--new`` tokens (no end-of-turn stop). The two paths run alternately,
``--repeats`` times each after a warm-up, in one process; the fastest time of each is printed
with the generated tokens per second, and whether the two paths sampled the same tokens and how
far their log-probs are apart. ``--mixed`` gives the rows alternating agents (a mixed-adapter
batch); without it every row is the first agent's. ``--prefill-only`` times the prompt's forward
and one token.

    python benchmarks/decode.py                                  # the demo's tiny model
    M=$(python -c "from marft.models.smollm2 import smollm2_path; print(smollm2_path())")
    python benchmarks/decode.py smollm2_arith --set model.name=$M --rows 4 --prompt 250 --new 64
    python benchmarks/decode.py smollm2_arith --set model.name=$M --rows 4 --prompt 250 --new 64 --mixed
"""

from __future__ import annotations

import argparse
import time

import torch

from marft.compose import load_config
from marft.compose.build import build_envs, build_team_model
from marft.compose.resolution import resolve
from marft.models.logprobs import SamplingParams
from marft.rollout.backends import Generation, HFBackend
from marft.rollout.trajectory import Prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--mixed", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--prefill-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config, args.overrides)
    resolved = resolve(cfg)
    (env,) = build_envs(resolved, 1)
    model = build_team_model(resolved, env, with_critic=False)
    with torch.no_grad():
        for name, p in model.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.eos_ids = [len(model.tokenizer) + 1]  # no token ends a turn: every row samples --new tokens
    new = 1 if args.prefill_only else args.new
    sampling = SamplingParams(temperature=args.temperature)
    backends = {d: HFBackend(model, sampling, new, decode=d) for d in ("eager", "fast")}
    generator = torch.Generator().manual_seed(0)
    vocab = len(model.tokenizer)
    ids = torch.randint(0, vocab, (args.rows, args.prompt), generator=generator)
    mask = torch.ones_like(ids)
    pad = min(7, args.prompt - 1)
    ids[0, :pad] = model.tokenizer.pad_token_id
    mask[0, :pad] = 0
    prompts = Prompts(ids=ids, mask=mask)
    roles = model.roles
    adapters = [roles[s % len(roles)] if args.mixed else roles[0] for s in range(args.rows)]
    keys = torch.arange(args.rows, dtype=torch.long) * 7919 + 1
    out: dict[str, Generation] = {}
    seconds: dict[str, list[float]] = {"eager": [], "fast": []}
    for name, backend in backends.items():  # warm-up
        out[name] = backend.generate(prompts, adapters, None, keys)
    for _ in range(args.repeats):
        for name, backend in backends.items():
            t0 = time.perf_counter()
            backend.generate(prompts, adapters, None, keys)
            seconds[name].append(time.perf_counter() - t0)
    tokens = int(out["fast"].response_mask.sum())
    label = f"{args.config} rows={args.rows} prompt={args.prompt} new={new} mixed={args.mixed}"
    for name in backends:
        best = min(seconds[name])
        print(f"{label} {name}: fastest {best:.3f} s ({tokens / best:.1f} tokens/s), all {seconds[name]}")
    same = torch.equal(out["eager"].response_ids, out["fast"].response_ids)
    gap = (out["eager"].logprobs - out["fast"].logprobs).abs().max().item()
    speedup = min(seconds["eager"]) / min(seconds["fast"])
    print(f"{label}: fast/eager speed-up {speedup:.2f}x; same tokens: {same}; max log-prob gap {gap:.2e}")


if __name__ == "__main__":
    main()
