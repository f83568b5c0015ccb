"""The training loop as timed phases: rollout (generate, score, env) then update.

A run directory receives ``config.yaml`` (the resolved config), ``metrics.jsonl``, TensorBoard
events, ``transcripts.jsonl`` and a final ``checkpoint/``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from marft.config import Config, to_dict
from marft.envs.base import make_env
from marft.models.team_model import TeamModel, load_base, resolve_device, resolve_dtype
from marft.reporting.metrics import MetricsSink
from marft.rollout.backends import ROLLOUT_BACKENDS
from marft.rollout.collector import Collector
from marft.team.graph import TeamGraph
from marft.trainer.algorithms import ALGORITHMS
from marft.trainer.checkpoint import save_checkpoint


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tiny_corpus(cfg: Config, env) -> list[str]:
    """Text the built-in tiny tokenizer must cover: prompts, roles, and the env's own words."""
    corpus = [a.system_prompt for a in cfg.team.agents] + [a.role for a in cfg.team.agents]
    corpus.append(cfg.team.message_format.replace("{role}", " ").replace("{content}", " "))
    vocab = getattr(env, "vocabulary", None)
    if vocab is not None:
        corpus.extend(vocab())
    return corpus


def default_run_dir(root: str | Path = "runs") -> Path:
    """A new folder ``runs/YYYYmmdd-HHMMSS[-k]``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, k = Path(root) / stamp, 1
    while path.exists():
        path, k = Path(root) / f"{stamp}-{k}", k + 1
    return path


@dataclass
class TrainResult:
    """What a finished run returns: where it lives and its metric rows."""

    run_dir: Path
    rows: list[dict[str, Any]]
    checkpoint: Path


class Trainer:
    """One run: ``setup()`` builds everything, ``train()`` loops, ``save()`` checkpoints.

    Args:
        cfg: a validated config (see :func:`marft.config.load_config`).
        run_dir: where the run writes; created if missing.
    """

    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = []

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.run.torch_threads:
            torch.set_num_threads(cfg.run.torch_threads)
        seed_everything(cfg.run.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.graph = TeamGraph.from_config(cfg.team)
        envs = [make_env(cfg.env.name, cfg.env.kwargs, self.graph) for _ in range(cfg.env.n_envs)]
        device = resolve_device(cfg.model.device)
        dtype = resolve_dtype(cfg.model.dtype, device)
        base, tokenizer = load_base(cfg.model, corpus=tiny_corpus(cfg, envs[0]), dtype=dtype)
        algo_cls = ALGORITHMS.get(cfg.algorithm.name)
        with_critic = algo_cls.critic is not None
        self.model = TeamModel(
            base,
            tokenizer,
            self.graph.roles,
            cfg.lora,
            value_head_width=cfg.algorithm.value_head_hidden,
            dtype=dtype,
            device=device,
            with_critic=with_critic,
        )
        backend = ROLLOUT_BACKENDS.get(cfg.sampling.backend)(self.model, cfg.sampling)
        self.algorithm = algo_cls(cfg.algorithm, cfg.sampling, self.model, self.graph)
        self.collector = Collector(
            envs,
            self.graph,
            self.model,
            backend,
            cfg.env,
            cfg.sampling,
            seed=cfg.run.seed,
            features=algo_cls.critic,
            ref_logprobs=cfg.algorithm.kl_coef > 0,
            episodic=algo_cls.episodic,
            group_size=cfg.algorithm.group_size,
            transcripts_per_iter=cfg.run.transcripts_per_iter,
        )
        self.sink = MetricsSink(self.run_dir, tensorboard=cfg.run.tensorboard)

    @property
    def steps_per_rollout(self) -> int:
        """``run.steps_per_iter`` team steps, or up to ``env.horizon`` for whole-episode collection."""
        return self.cfg.env.horizon if self.algorithm.episodic else self.cfg.run.steps_per_iter

    def train(self) -> TrainResult:
        cfg = self.cfg
        start = time.perf_counter()
        env_steps = 0
        bar = tqdm(
            range(cfg.run.iterations), desc="marft train", disable=not cfg.run.progress, dynamic_ncols=True
        )
        if cfg.run.progress:
            bar.write(
                f"marft: training {', '.join(self.graph.roles)} on {self.model.device}; run directory {self.run_dir}"
            )
        for it in bar:
            t0 = time.perf_counter()
            rollout = self.collector.collect(self.steps_per_rollout)
            t1 = time.perf_counter()
            update = self.algorithm.update(rollout, it)
            t2 = time.perf_counter()
            env_steps += rollout.env_steps
            ret = float(np.mean(rollout.episode_returns)) if rollout.episode_returns else float("nan")
            row = {
                "iteration": it,
                "env_steps": env_steps,
                "episode_return": ret,
                "episodes": len(rollout.episode_returns),
                "time_s": t2 - start,
                "time_iter_s": t2 - t0,
                "time_rollout_s": t1 - t0,
                "time_update_s": t2 - t1,
                **{f"time_{k}_s": v for k, v in rollout.timings.items()},
                **update.metrics,
            }
            self.rows.append(row)
            self.sink.log(row)
            self.sink.transcripts(it, rollout.transcripts)
            bar.set_postfix(ret=f"{ret:.3f}", trained=",".join(update.trained) or "-")
        bar.close()
        ckpt = self.save()
        self.sink.close()
        return TrainResult(run_dir=self.run_dir, rows=self.rows, checkpoint=ckpt)

    def save(self) -> Path:
        state = {"iteration": len(self.rows), "env_steps": self.rows[-1]["env_steps"] if self.rows else 0}
        return save_checkpoint(self.run_dir / "checkpoint", self.model, self.algorithm, state)


def train(cfg: Config, run_dir: str | Path | None = None) -> TrainResult:
    """Build and run a whole training run; returns where it lives and its metric rows."""
    trainer = Trainer(cfg, run_dir or default_run_dir())
    trainer.setup()
    return trainer.train()
