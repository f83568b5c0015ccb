"""One training iteration split by phase, and peak memory, for teams of 1, 2 and 4 agents.

Each (model, team size) runs in a fresh subprocess so that peak memory is its own. Phases:

* ``generate``: sampling the agents' actions (KV-cached, one adapter per row);
* ``score``: the scoring phase (critic features: one base forward per generation turn, adapters
  disabled);
* ``update``: advantages, the critic's fit and the PPO epochs (``fwd_bwd``: the policy's forwards
  and backwards inside it);
* ``other``: env steps, prompt building, tokenisation and bookkeeping.

Peak memory is the process's peak resident set on CPU, and ``torch.cuda.max_memory_allocated`` on
CUDA. Usage::

    python benchmarks/iteration.py                      # tiny model and SmolLM2-135M-Instruct
    python benchmarks/iteration.py --models tiny --iters 3 --out benchmarks/results/iteration.json
    python benchmarks/iteration.py --models FOLDER --agents 1 2 --envs 32 --tokens 64   # any model folder
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from fresh import run_fresh


def team_overrides(n_agents: int) -> list[str]:
    roles = ["speaker", "listener", "checker", "judge"][:n_agents] if n_agents > 1 else ["solo"]
    agents = [
        {
            "role": r,
            "system_prompt": "you see the secret . say one word to your partner",
            "observes": roles[:i],
        }
        for i, r in enumerate(roles)
    ]
    ov = [f"team.agents={json.dumps(agents)}"]
    ov += [f"env.kwargs.informed_role={roles[0]}", f"env.kwargs.answer_role={roles[-1]}"]
    return ov


def run_one(model: str, n_agents: int, iters: int, n_envs: int, max_new_tokens: int, mb_tokens: int) -> dict:
    import torch

    from marft.compose import load_config
    from marft.trainer import Trainer

    ov = [
        "run.progress=false",
        "run.loggers=[]",
        f"env.n_envs={n_envs}",
        f"sampling.max_new_tokens={max_new_tokens}",
        "algorithm.ppo_epochs=1",
        "algorithm.num_minibatches=1",
        f"algorithm.micro_batch_size={n_envs}",
        f"algorithm.micro_batch_tokens={mb_tokens}",
        *team_overrides(n_agents),
    ]
    if model != "tiny":
        ov += [f"model.name={model}", "lora.modules_to_save=[]", "lora.target_modules=[q_proj,v_proj]"]
    cfg = load_config("demo", ov)
    trainer = Trainer(cfg, Path("/tmp/marft-bench") / f"{Path(model).name}-{n_agents}")
    trainer.setup()
    cuda = trainer.parts.model.device.type == "cuda"
    rss_after_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peaks: list[float] = []  # the trainer resets CUDA's peak at each phase: keep its per-iteration peaks
    phases: dict[str, list[float]] = {
        k: [] for k in ("iter", "generate", "score", "env", "update", "fwd_bwd")
    }
    for it in range(iters + 1):  # the first iteration warms up and is not counted
        t0 = time.perf_counter()
        step = trainer.run_iteration(it)
        if cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if it == 0:
            continue
        peaks.append(step.memory.get("cuda_memory_peak_mb", 0.0))
        phases["iter"].append(t2 - t0)
        for k in ("generate", "env"):
            phases[k].append(step.trajectory.timings.get(k, 0.0))
        phases["score"].append(step.timings["score"])
        phases["update"].append(sum(step.timings[k] for k in ("advantages", "critic", "policy")))
        phases["fwd_bwd"].append(step.policy.fwd_bwd_s)
    mean = {k: statistics.mean(v) for k, v in phases.items()}
    core = mean["generate"] + mean["score"] + mean["fwd_bwd"]
    return {
        "model": Path(model).name,
        "agents": n_agents,
        "n_envs": n_envs,
        "max_new_tokens": max_new_tokens,
        "micro_batch_tokens": mb_tokens,
        "device": str(trainer.parts.model.device),
        "iters": iters,
        "sec_iter": mean["iter"],
        "sec_generate": mean["generate"],
        "sec_score": mean["score"],
        "sec_update": mean["update"],
        "sec_fwd_bwd": mean["fwd_bwd"],
        "sec_env_prompts": mean["env"],
        "outside_gen_fwd_bwd_frac": 1.0 - core / mean["iter"],
        "peak_mem_mb": max(peaks) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_setup_mb": rss_after_setup,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2"], help="tiny, smollm2, or a model path")
    p.add_argument("--agents", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument(
        "--micro-batch-tokens",
        type=int,
        default=-1,
        help="algorithm.micro_batch_tokens for every case (default: about one 1-agent batch; 0: off)",
    )
    p.add_argument("--envs", type=int, default=32, help="env copies for a model given by path")
    p.add_argument("--tokens", type=int, default=64, help="max_new_tokens for a model given by path")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/iteration.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = p.parse_args()
    if args.one:
        model, n, iters, envs, tokens, mbt = args.one.split(",")
        print(json.dumps(run_one(model, int(n), int(iters), int(envs), int(tokens), int(mbt))))
        return
    rows = []
    for model in args.models:
        if model == "smollm2":
            from marft.models.smollm2 import smollm2_path

            model, envs, tokens, budget = str(smollm2_path()), 8, 16, 512
        elif model == "tiny":
            envs, tokens, budget = 128, 2, 3072
        else:  # a model folder (e.g. a random-weight 0.5B or 1.5B shape on a GPU)
            envs, tokens, budget = args.envs, args.tokens, 0
        if args.micro_batch_tokens >= 0:
            budget = args.micro_batch_tokens
        for n in args.agents:
            spec = f"{model},{n},{args.iters},{envs},{tokens},{budget}"
            row = run_fresh(__file__, "--one", spec)
            rows.append(row)
            print(
                f"{row['model']:>24} agents={n} iter={row['sec_iter']:.3f}s gen={row['sec_generate']:.3f} "
                f"score={row['sec_score']:.3f} update={row['sec_update']:.3f} "
                f"(fwd+bwd {row['sec_fwd_bwd']:.3f}) "
                f"env+prompts={row['sec_env_prompts']:.3f} "
                f"outside={100 * row['outside_gen_fwd_bwd_frac']:.1f}% "
                f"peak={row['peak_mem_mb']:.0f}MB mb_tokens={budget}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
