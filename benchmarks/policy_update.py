"""Seconds of one policy update on a fixed demo trajectory: the policy phase alone, without
collection noise. Runs on the code of any commit since issue 11 (the trainer's parts are looked up
under their names before and after issue 31), so two commits can be compared side by side::

    PYTHONPATH=OLD_CHECKOUT/src python benchmarks/policy_update.py --label before
    python benchmarks/policy_update.py --label after

Prints the median and the fastest of ``--repeats`` updates (each on the same trajectory, scores
and advantages; the adapters change between them, the work does not).

``--steps per_adapter,mixed`` times both ways of ``algorithm.policy_step`` on the same trajectory,
alternating them update by update (so that a machine slowing down hits both alike)::

    python benchmarks/policy_update.py --steps per_adapter,mixed
    python benchmarks/policy_update.py --preset smollm2_arith --set env.n_envs=8 \
        --steps per_adapter,mixed --repeats 6
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from marft.compose import load_config
from marft.trainer.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="this code")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--steps", default=None, help="comma-separated algorithm.policy_step values, timed in turn"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet = ["run.progress=false", "run.loggers=[]", "run.report=false"]
    cfg = load_config(args.preset, quiet + args.set)
    trainer = Trainer(cfg, tempfile.mkdtemp())
    trainer.setup()
    parts = getattr(trainer, "parts", None)  # issue 31 gathered the parts; older code kept them apart
    sampler = parts.sampler if parts is not None else trainer.collector
    scorer = parts.scorer if parts is not None else trainer.scorer
    learner = parts.learner if parts is not None else trainer.learner
    trajectory = sampler.collect(trainer.steps_per_rollout)
    scores = scorer.score(trajectory)
    targets = learner.targets(trajectory, scores)
    steps = args.steps.split(",") if args.steps else [None]
    seconds: dict[str | None, list[float]] = {step: [] for step in steps}
    for _ in range(args.repeats):
        for step in steps:
            if step is not None:
                learner.policy.mixed = step == "mixed"
            t0 = time.perf_counter()
            learner.update_policy(trajectory, scores, targets, 10)
            seconds[step].append(time.perf_counter() - t0)
    for step, times in seconds.items():
        times.sort()
        label = args.label if step is None else f"{args.label}, policy_step={step}"
        print(f"{label}: median {times[len(times) // 2]:.4f} s, fastest {times[0]:.4f} s")


if __name__ == "__main__":
    main()
