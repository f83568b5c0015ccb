"""The training loop as timed phases: rollout (generate, score, env) then update.

A run directory receives ``config.yaml`` (the resolved config), ``metrics.jsonl``, TensorBoard
events, ``transcripts.jsonl`` and ``checkpoints/`` (see :mod:`marft.trainer.checkpoint`). A run
resumes exactly from its newest complete checkpoint (``Trainer(cfg, run_dir, resume=True)``);
SIGINT and SIGTERM save a checkpoint at the end of the current iteration and stop.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import warnings
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
from marft.runtime import configure_threads
from marft.team.graph import TeamGraph
from marft.trainer.algorithms import ALGORITHMS
from marft.trainer.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    latest_checkpoint,
    load_adapter_weights,
    load_trainer_files,
    resolve_checkpoint,
    save_checkpoint,
)


class TrainingStopped(RuntimeError):
    """The run stopped early: a signal, or too many faults. ``checkpoint`` is where its work is."""

    def __init__(self, message: str, checkpoint: Path | None, exit_code: int) -> None:
        super().__init__(message)
        self.checkpoint, self.exit_code = checkpoint, exit_code


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and (if present) CUDA RNG states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    report: Path | None = None


class Trainer:
    """One run: ``setup()`` builds everything (and restores a checkpoint when resuming),
    ``train()`` loops, ``save()`` checkpoints.

    Args:
        cfg: a validated config (see :func:`marft.config.load_config`).
        run_dir: where the run writes; created if missing.
        resume: continue ``run_dir`` from its newest complete checkpoint.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.rows: list[dict[str, Any]] = []
        self.start_iteration = 0
        self.env_steps = 0
        self._elapsed_before = 0.0  # training seconds of earlier sessions of this run
        self._nonfinite_in_row: dict[str, int] = {}
        self._signal: int | None = None
        self.checkpoint: Path | None = None

    def setup(self) -> None:
        cfg = self.cfg
        ckpt = resolve_checkpoint(self.run_dir) if self.resume else None  # fail before loading a model
        if not self.resume and (
            (self.run_dir / "metrics.jsonl").exists() or (self.run_dir / CHECKPOINTS).exists()
        ):
            raise CheckpointError(
                f"{self.run_dir} already holds a run; continue it with marft train --resume {self.run_dir}, "
                "or give another --out"
            )
        self.threads = configure_threads(cfg.run.torch_threads)
        seed_everything(cfg.run.seed)
        self.graph = TeamGraph.from_config(cfg.team)
        # Envs first: a data problem is reported before anything is written or loaded.
        envs = [make_env(cfg.env.name, cfg.env.kwargs, self.graph) for _ in range(cfg.env.n_envs)]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
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
        if ckpt is not None:
            try:
                self._restore(ckpt)
            except (ValueError, KeyError, RuntimeError) as e:  # a checkpoint that does not fit this config
                raise CheckpointError(f"cannot resume from {ckpt}: {e}") from None
        self.sink = MetricsSink(
            self.run_dir, tensorboard=cfg.run.tensorboard, start_iteration=self.start_iteration
        )
        self.rows = self.sink.rows_before(self.start_iteration)

    def _restore(self, ckpt: Path) -> None:
        load_adapter_weights(self.model, ckpt)
        optim, state, value_head = load_trainer_files(ckpt)
        if self.model.value_head is not None:
            if value_head is None:
                raise ValueError(
                    f"{ckpt} has no value head but algorithm {self.cfg.algorithm.name} needs one"
                )
            self.model.value_head.load_state_dict(value_head)
        self.algorithm.load_state_dict(optim)
        self.collector.load_state_dict(state["collector"])
        set_rng_state(state["rng"])
        self.start_iteration = state["iteration"]
        self.env_steps = state["env_steps"]
        self._elapsed_before = state["elapsed_s"]
        self._nonfinite_in_row = dict(state["nonfinite_in_row"])
        self.checkpoint = ckpt

    @property
    def steps_per_rollout(self) -> int:
        """``run.steps_per_iter`` team steps, or up to ``env.horizon`` for whole-episode collection."""
        return self.cfg.env.horizon if self.algorithm.episodic else self.cfg.run.steps_per_iter

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum
        # A second signal is not caught: the user can still stop at once.
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)

    def train(self) -> TrainResult:
        """Run the remaining iterations, checkpointing every ``run.checkpoint_every`` and at the end.

        Raises:
            TrainingStopped: a signal arrived (a checkpoint was saved first), or the run hit
                ``run.max_nonfinite_in_row`` or ``env.max_failure_rate``.
        """
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            return self._loop()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.sink.close()

    def _loop(self) -> TrainResult:
        cfg = self.cfg
        start = time.perf_counter() - self._elapsed_before
        bar = tqdm(
            range(self.start_iteration, cfg.run.iterations),
            initial=self.start_iteration,
            total=cfg.run.iterations,
            desc="marft train",
            disable=not cfg.run.progress,
            dynamic_ncols=True,
        )
        if cfg.run.progress:
            verb = f"resuming at iteration {self.start_iteration}" if self.resume else "training"
            bar.write(
                f"marft: {verb} {', '.join(self.graph.roles)} on {self.model.device} with {self.threads} CPU "
                f"threads; run directory {self.run_dir}"
            )
        for it in bar:
            t0 = time.perf_counter()
            rollout = self.collector.collect(self.steps_per_rollout)
            t1 = time.perf_counter()
            update = self.algorithm.update(rollout, it)
            t2 = time.perf_counter()
            self.env_steps += rollout.env_steps
            ret = float(np.mean(rollout.episode_returns)) if rollout.episode_returns else float("nan")
            row = {
                "iteration": it,
                "env_steps": self.env_steps,
                "episode_return": ret,
                "episodes": len(rollout.episode_returns),
                "episodes_failed": rollout.failed_episodes,
                "time_s": t2 - start,
                "time_iter_s": t2 - t0,
                "time_rollout_s": t1 - t0,
                "time_update_s": t2 - t1,
                **{f"time_{k}_s": v for k, v in rollout.timings.items()},
                **rollout.env_metrics,
                **update.metrics,
            }
            self.rows.append(row)
            self.sink.log(row)
            self.sink.transcripts(it, rollout.transcripts)
            bar.set_postfix(ret=f"{ret:.3f}", trained=",".join(update.trained) or "-")
            done = it + 1
            self._elapsed_before = t2 - start
            fault = self._check_faults(row, rollout)
            every = cfg.run.checkpoint_every
            if (
                fault
                or self._signal is not None
                or done == cfg.run.iterations
                or (every and done % every == 0)
            ):
                self.save(done)
            if fault:
                bar.close()
                raise TrainingStopped(f"{fault}; last checkpoint: {self.checkpoint}", self.checkpoint, 1)
            if self._signal is not None:
                bar.close()
                name = signal.Signals(self._signal).name
                raise TrainingStopped(
                    f"stopped by {name} after iteration {done}; checkpoint saved at {self.checkpoint}; "
                    f"continue with: marft train --resume {self.run_dir}",
                    self.checkpoint,
                    128 + self._signal,
                )
        bar.close()
        if self.checkpoint is None:  # resumed a run that had already finished
            self.checkpoint = latest_checkpoint(self.run_dir)
        report = None
        if cfg.run.report:
            from marft.reporting.report import write_report

            try:
                report = write_report([self.run_dir])
            except Exception as e:  # the trained team is saved; a plotting problem must not hide that
                warnings.warn(
                    f"could not write the report ({e}); try: marft report {self.run_dir}", stacklevel=2
                )
        return TrainResult(run_dir=self.run_dir, rows=self.rows, checkpoint=self.checkpoint, report=report)

    def _check_faults(self, row: dict[str, Any], rollout) -> str | None:
        """Count non-finite skips in a row per agent and failed episodes; a message when the
        run must stop."""
        cfg = self.cfg
        for key, value in row.items():
            if key.startswith("nonfinite_skip/"):
                who = key.split("/", 1)[1]
                self._nonfinite_in_row[who] = self._nonfinite_in_row.get(who, 0) + 1 if value else 0
                if self._nonfinite_in_row[who] >= cfg.run.max_nonfinite_in_row:
                    return (
                        f"{who}'s loss or gradient was not finite in {self._nonfinite_in_row[who]} iterations "
                        f"in a row (run.max_nonfinite_in_row); lower algorithm.policy_lr or raise "
                        f"algorithm.max_grad_norm's strictness, and resume"
                    )
        total = len(rollout.episode_returns) + rollout.failed_episodes
        if rollout.failed_episodes and rollout.failed_episodes > cfg.env.max_failure_rate * total:
            return (
                f"{rollout.failed_episodes} of {total} episodes failed in iteration {row['iteration']} "
                f"(env.max_failure_rate {cfg.env.max_failure_rate}); the log above shows the env's errors"
            )
        return None

    def save(self, iteration: int | None = None) -> Path:
        """Write a complete checkpoint after ``iteration`` iterations (default: those done)."""
        iteration = len(self.rows) if iteration is None else iteration
        state = {
            "iteration": iteration,
            "env_steps": self.env_steps,
            "elapsed_s": self._elapsed_before,
            "nonfinite_in_row": self._nonfinite_in_row,
            "rng": rng_state(),
            "collector": self.collector.state_dict(),
        }
        self.checkpoint = save_checkpoint(
            self.run_dir,
            self.model,
            self.algorithm.state_dict(),
            state,
            iteration=iteration,
            env_steps=self.env_steps,
            keep=self.cfg.run.keep_checkpoints,
        )
        return self.checkpoint


def train(cfg: Config, run_dir: str | Path | None = None, resume: bool = False) -> TrainResult:
    """Build and run a whole training run (or continue one with ``resume``); returns where it
    lives and its metric rows."""
    trainer = Trainer(cfg, run_dir or default_run_dir(), resume=resume)
    trainer.setup()
    return trainer.train()
