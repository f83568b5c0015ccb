"""Seconds of one policy update on a fixed demo trajectory: the policy phase alone, without
collection noise. Runs on the code of any commit since issue 11 (the trainer's parts are looked up
under their names before and after issue 31), so two commits can be compared side by side::

    PYTHONPATH=OLD_CHECKOUT/src python benchmarks/policy_update.py --label before
    python benchmarks/policy_update.py --label after

Prints the median and the fastest of ``--repeats`` updates (each on the same trajectory, scores
and advantages; the adapters change between them, the work does not).
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("demo", ["run.progress=false", "run.loggers=[]", "run.report=false"])
    trainer = Trainer(cfg, tempfile.mkdtemp())
    trainer.setup()
    parts = getattr(trainer, "parts", None)  # issue 31 gathered the parts; older code kept them apart
    sampler = parts.sampler if parts is not None else trainer.collector
    scorer = parts.scorer if parts is not None else trainer.scorer
    learner = parts.learner if parts is not None else trainer.learner
    trajectory = sampler.collect(trainer.steps_per_rollout)
    scores = scorer.score(trajectory)
    targets = learner.targets(trajectory, scores)
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        learner.update_policy(trajectory, scores, targets, 10)
        seconds.append(time.perf_counter() - t0)
    seconds.sort()
    print(f"{args.label}: median {seconds[len(seconds) // 2]:.4f} s, fastest {seconds[0]:.4f} s")


if __name__ == "__main__":
    main()
