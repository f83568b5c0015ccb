"""The training loop as timed phases: collect, score, advantages, critic, policy, log, checkpoint.

A run directory receives ``config.yaml`` (the resolved config), ``metrics.jsonl`` (each phase's
seconds among the metrics), ``transcripts.jsonl``, ``checkpoints/`` (see
:mod:`marft.trainer.checkpoint`) and what the trackers of ``run.loggers`` write (``tensorboard/``,
``wandb/``, ``loggers.json``). A run resumes exactly from its newest complete checkpoint
(``Trainer(cfg, run_dir, resume=True)``); SIGINT and SIGTERM save a checkpoint at the end of the
iteration and stop.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from marft.compose import build_envs, build_training, validate
from marft.config import Config, to_dict
from marft.distributed.rollout import ray_sampler
from marft.learner.parallel import SINGLE
from marft.reporting.guard import guard_metrics
from marft.reporting.metrics import MetricsSink
from marft.reporting.trackers import RunInfo, TrackerSet, check_trackers
from marft.rollout.trajectory import Trajectory
from marft.runtime import configure_threads
from marft.team.graph import TeamGraph
from marft.trainer.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    latest_checkpoint,
    load_adapter_weights,
    load_trainer_files,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from marft.trainer.faults import check_faults
from marft.trainer.outcome import TrainingStopped, TrainResult
from marft.trainer.phases import Iteration, PhaseMeter, release_free_memory
from marft.trainer.rng import default_run_dir, rng_state, seed_everything, set_rng_state

PHASES = ("collect", "score", "advantages", "critic", "policy", "sync")
"""The timed phases of an iteration before logging (``sync``: the generation backend receives the
new adapters); ``log`` and ``checkpoint`` follow."""


class Trainer:
    """One run: ``setup()`` builds everything (and restores a checkpoint when resuming),
    ``train()`` loops, ``save()`` checkpoints.

    Args:
        cfg: a config (see :func:`marft.compose.load_config`); validated again in ``setup``.
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
        self.generated_tokens = 0  # every agent's sampled training tokens so far (run.token_budget)
        self.version = 0  # adapter updates so far (what a generation backend samples with)
        self._elapsed_before = 0.0  # training seconds of earlier sessions of this run
        self._nonfinite_in_row: dict[str, int] = {}
        self._signal: int | None = None
        # Seconds of the previous iteration's log and checkpoint phases, reported in the next row
        # (a row is written before its checkpoint, so that no iteration is ever logged twice).
        self._carried = {"time_log_s": 0.0, "time_checkpoint_s": 0.0}
        self.checkpoint: Path | None = None

    def setup(self) -> None:
        cfg = self.cfg
        validate(cfg)
        check_trackers(cfg.run.loggers)
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
        self.graph: TeamGraph = TeamGraph.from_config(cfg.team)
        # Envs first: a data problem is reported before anything is written or loaded.
        envs = build_envs(cfg, self.graph, cfg.env.n_envs)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        manifest = verify_checkpoint(ckpt) if ckpt is not None else {}
        start = manifest.get("iteration", 0)
        # Trackers open before the model loads: a tracker that cannot (no W&B login) fails fast.
        name = cfg.run.name or self.run_dir.resolve().name
        info = RunInfo(name, self.run_dir, to_dict(cfg), start_iteration=start)
        trackers = TrackerSet(cfg.run, info, manifest.get("loggers", {}), self.graph.roles)
        try:
            self.sink = MetricsSink(self.run_dir, start, trackers)
            self._build(envs, ckpt)
        except BaseException as e:
            self.close()
            trackers.close("killed" if isinstance(e, KeyboardInterrupt) else "failed")
            raise

    def _build(self, envs: list, ckpt: Path | None) -> None:
        """The model, the generation backend, the collector and the learner; a checkpoint restored."""
        cfg = self.cfg
        self.learners = None  # the other data-parallel learners (run.ray.learners > 1)
        if cfg.run.ray.enabled and cfg.run.ray.learners > 1:
            from marft.distributed.learners import RayLearners
            from marft.models.loading import resolve_device

            self.learners = RayLearners(cfg, resolve_device(cfg.model.device))
        dp = self.learners.dp if self.learners is not None else SINGLE
        parts = build_training(
            cfg, envs, remote_sampler=ray_sampler(cfg) if cfg.run.ray.enabled else None, dp=dp
        )
        self.model, self.backend, self.collector = parts.model, parts.backend, parts.collector
        self.scorer, self.learner, self.algorithm = parts.scorer, parts.learner, parts.algorithm
        if ckpt is not None:
            try:
                self._restore(ckpt)
            except (ValueError, KeyError, RuntimeError) as e:  # a checkpoint that does not fit this config
                raise CheckpointError(f"cannot resume from {ckpt}: {e}") from None
        if self.learners is not None:
            self.learners.sync_from(self.model, self.learner)
        self.rows = self.sink.rows_before(self.start_iteration)
        self.sink.catch_up(self.rows)

    def _restore(self, ckpt: Path) -> None:
        load_adapter_weights(self.model, ckpt)
        optim, state, value_head = load_trainer_files(ckpt)
        if self.model.value_head is not None:
            if value_head is None:
                raise ValueError(
                    f"{ckpt} has no value head but algorithm {self.cfg.algorithm.name} needs one"
                )
            self.model.value_head.load_state_dict(value_head)
        self.learner.load_state_dict(optim)
        self.collector.load_state_dict(state["collector"])
        set_rng_state(state["rng"])
        self.start_iteration = state["iteration"]
        self.version = state["iteration"]
        self.backend.update_weights(self.version, self.model.adapter_weights)  # an engine with its own copy
        self.env_steps = state["env_steps"]
        self.generated_tokens = state.get("generated_tokens", 0)  # absent before token budgets
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
        status = "failed"
        try:
            result, status = self._loop(), "finished"
            return result
        except (TrainingStopped, KeyboardInterrupt) as e:
            # By a signal (a second Ctrl-C too), or by a fault.
            status = "failed" if getattr(e, "exit_code", 130) < 128 else "killed"
            raise
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            try:
                self.close()
            finally:
                self.sink.close(status)

    def close(self) -> None:
        """Stop what the run started outside this process (rollout workers)."""
        for part in (getattr(self, "collector", None), getattr(self, "learners", None)):
            if hasattr(part, "shutdown"):
                part.shutdown()

    def run_iteration(self, iteration: int) -> Iteration:
        """Collect, score, advantages, critic, policy: one iteration, each phase timed. The
        generation backend then receives the new adapter version."""
        meter = PhaseMeter()
        learner = self.learner
        with meter.phase("collect"):
            trajectory = self.collector.collect(self.steps_per_rollout)
        try:
            if self.learners is not None:
                self.learners.start(trajectory, iteration)
            with meter.phase("score"):
                scores = self.scorer.score(trajectory, learner.roles_to_train(iteration))
            with meter.phase("advantages"):
                targets = learner.targets(trajectory, scores)
            with meter.phase("critic"):
                critic_metrics = learner.fit_critic(targets)
            with meter.phase("policy"):
                update = learner.update_policy(trajectory, scores, targets, iteration)
            if self.learners is not None:
                self.learners.finish()
        except Exception as e:
            if self.learners is None:
                raise
            saved = (
                f"last checkpoint: {self.checkpoint}" if self.checkpoint else "no checkpoint was saved yet"
            )
            raise TrainingStopped(
                f"a learner failed in iteration {iteration} ({type(e).__name__}: {str(e)[:300]}); "
                f"{saved}; continue with: marft train --resume {self.run_dir}",
                self.checkpoint,
                1,
            ) from e
        with meter.phase("sync"):
            self.version += 1
            self.backend.update_weights(self.version, self.model.adapter_weights, update.trained)
        update.metrics.update(critic_metrics)
        update.metrics.update(scores.metrics)
        update.metrics.update(getattr(self.collector, "last_metrics", {}))  # rollout workers' counters
        release_free_memory()
        return Iteration(trajectory, scores, update, meter.seconds, meter.metrics())

    def _row(self, it: int, step: Iteration, elapsed: float) -> dict[str, Any]:
        traj, timings = step.trajectory, step.timings
        returns = traj.episode_returns
        return {
            "iteration": it,
            "env_steps": self.env_steps,
            "generated_tokens": self.generated_tokens,
            # fsum: exact, so the mean does not depend on the order episodes arrive from workers
            "episode_return": math.fsum(returns) / len(returns) if returns else float("nan"),
            "episodes": len(returns),
            "episodes_failed": traj.failed_episodes,
            "time_s": elapsed,
            "time_iter_s": sum(timings.values()),
            **{f"time_{k}_s": v for k, v in timings.items()},
            **{f"time_{k}_s": v for k, v in traj.timings.items()},
            **self._carried,
            **step.memory,
            **traj.env_summary(),
            **traj.route_summary(),
            **step.update.metrics,
        }

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
            if self.budget_spent:
                bar.write(f"marft: token budget spent ({self.generated_tokens} generated tokens)")
                break
            step = self.run_iteration(it)
            self.env_steps += step.trajectory.env_steps
            self.generated_tokens += sum(int(a.response_mask.sum()) for a in step.trajectory.agents)
            self._elapsed_before = time.perf_counter() - start
            row = self._row(it, step, self._elapsed_before)
            row.update(guard_metrics(self.rows, row, cfg.reward.guard))
            t0 = time.perf_counter()
            self.rows.append(row)
            self.sink.log(row, step.trajectory.transcripts)
            self._carried = {"time_log_s": time.perf_counter() - t0, "time_checkpoint_s": 0.0}
            budget = (
                {"tokens": f"{self.generated_tokens}/{cfg.run.token_budget}"} if cfg.run.token_budget else {}
            )
            bar.set_postfix(
                ret=f"{row['episode_return']:.3f}", trained=",".join(step.update.trained) or "-", **budget
            )
            self._after_iteration(it + 1, row, step.trajectory, bar)
        bar.close()
        return self._finish()

    def _after_iteration(self, done: int, row: dict[str, Any], traj: Trajectory, bar) -> None:
        """Checkpoint when due (timed into the next row), and stop on a fault or a signal."""
        cfg = self.cfg
        fault = check_faults(row, traj, self._nonfinite_in_row, cfg)
        every = cfg.run.checkpoint_every
        last = done == cfg.run.iterations or self.budget_spent
        if fault or self._signal is not None or last or (every and done % every == 0):
            t0 = time.perf_counter()
            self.save(done)
            self._carried["time_checkpoint_s"] = time.perf_counter() - t0
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

    @property
    def budget_spent(self) -> bool:
        """Whether the team has generated ``run.token_budget`` training tokens."""
        budget = self.cfg.run.token_budget
        return budget is not None and self.generated_tokens >= budget

    def _finish(self) -> TrainResult:
        if self.checkpoint is None:  # resumed a run that had already finished
            self.checkpoint = latest_checkpoint(self.run_dir)
        report = None
        if self.cfg.run.report:
            from marft.reporting.report import write_report

            try:
                report = write_report([self.run_dir])
            except Exception as e:  # the trained team is saved; a plotting problem must not hide that
                warnings.warn(
                    f"could not write the report ({e}); try: marft report {self.run_dir}", stacklevel=2
                )
            if report is not None:
                self.sink.artifact(report, "report")
        return TrainResult(run_dir=self.run_dir, rows=self.rows, checkpoint=self.checkpoint, report=report)

    def save(self, iteration: int | None = None) -> Path:
        """Write a complete checkpoint after ``iteration`` iterations (default: those done)."""
        iteration = len(self.rows) if iteration is None else iteration
        state = {
            "iteration": iteration,
            "env_steps": self.env_steps,
            "generated_tokens": self.generated_tokens,
            "elapsed_s": self._elapsed_before,
            "nonfinite_in_row": self._nonfinite_in_row,
            "rng": rng_state(),
            "collector": self.collector.state_dict(),
        }
        self.checkpoint = save_checkpoint(
            self.run_dir,
            self.model,
            self.learner.state_dict(),
            state,
            iteration=iteration,
            env_steps=self.env_steps,
            keep=self.cfg.run.keep_checkpoints,
            loggers=self.sink.run_ids,
        )
        return self.checkpoint


def train(cfg: Config, run_dir: str | Path | None = None, resume: bool = False) -> TrainResult:
    """Build and run a whole training run (or continue one with ``resume``); returns where it
    lives and its metric rows."""
    trainer = Trainer(cfg, run_dir or default_run_dir(), resume=resume)
    trainer.setup()
    return trainer.train()
