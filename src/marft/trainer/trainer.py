"""The training loop as timed phases: collect, score, advantages, critic, policy, log, checkpoint.

A run directory receives ``config.yaml`` (the resolved config), ``metrics.jsonl`` (each phase's
seconds among the metrics), ``transcripts.jsonl``, ``checkpoints/`` (see
:mod:`marft.trainer.checkpoint`) and what the trackers of ``run.loggers`` write (``tensorboard/``,
``wandb/``, ``loggers.json``). A run resumes exactly from its newest complete checkpoint
(``Trainer(cfg, run_dir, resume=True)``); SIGINT and SIGTERM save a checkpoint at the end of the
iteration and stop.

The trainer only runs the loop. What it is made of lives in small parts: the run's counters and
token budget (:mod:`~marft.trainer.state`), the progress bar (:mod:`~marft.trainer.progress`), the
signals that stop it (:mod:`~marft.trainer.signals`), the other data-parallel learners
(:mod:`~marft.trainer.peers`), the typed stats and the metrics row (:mod:`~marft.trainer.stats`),
the fault checks (:mod:`~marft.trainer.faults`) and the checkpoint files
(:mod:`~marft.trainer.checkpoint`).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from marft.compose import Resolved, TrainingParts, build_envs, build_training, resolve
from marft.config import Config, to_dict
from marft.distributed.samplers import ray_sampler
from marft.envs.copies import EnvCopies
from marft.reporting.guard import guard_metrics
from marft.reporting.metrics import MetricsSink
from marft.reporting.trackers import RunInfo, TrackerSet, check_trackers
from marft.rollout.sampler import StaleSampler
from marft.rollout.stats import CollectStats
from marft.runtime import ThreadGovernor
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
from marft.trainer.peers import LearnerPeers
from marft.trainer.phases import PhaseMeter, release_free_memory
from marft.trainer.progress import Progress
from marft.trainer.rng import default_run_dir, rng_state, seed_everything, set_rng_state
from marft.trainer.signals import StopSignals
from marft.trainer.state import RunState, TokenBudget
from marft.trainer.stats import IterationStats, metrics_row

PHASES = ("collect", "score", "advantages", "critic", "policy", "sync")
"""The timed phases of an iteration before logging (``sync``: the generation backend receives the
new adapters); ``log`` and ``checkpoint`` follow."""


class Trainer:
    """One run: ``setup()`` builds everything (and restores a checkpoint when resuming),
    ``train()`` loops, ``save()`` checkpoints.

    Args:
        cfg: a config (see :func:`marft.compose.load_config`).
        run_dir: where the run writes; created if missing.
        resume: continue ``run_dir`` from its newest complete checkpoint.

    Attributes:
        state: the run's counters (saved in every checkpoint).
        rows: every iteration's metrics row so far.
        checkpoint: the newest checkpoint this run wrote or resumed from.
        parts: what ``setup()`` built (model, sampler, backend, scorer, learner).
        peers: the other data-parallel learners (none with one learner).
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.state = RunState()
        self.budget = TokenBudget(cfg.run.token_budget)
        self.rows: list[dict[str, Any]] = []
        self.checkpoint: Path | None = None
        self.parts: TrainingParts | None = None
        self.peers = LearnerPeers()
        self.sink: MetricsSink | None = None
        self.signals = StopSignals()
        self.threads = 0
        self.governor: ThreadGovernor | None = None  # adapts torch's threads to other processes
        # Seconds of the previous iteration's log and checkpoint phases, reported in the next row
        # (a row is written before its checkpoint, so that no iteration is ever logged twice).
        self._carried = {"time_log_s": 0.0, "time_checkpoint_s": 0.0}

    def setup(self) -> None:
        """Check the config, build the env copies, open the trackers, then load the model and the
        rest (:meth:`_build`); a checkpoint is restored when resuming."""
        cfg = self.cfg
        resolved = resolve(cfg)
        check_trackers(cfg.run.loggers)
        ckpt = resolve_checkpoint(self.run_dir) if self.resume else None  # fail before loading a model
        if not self.resume and (
            (self.run_dir / "metrics.jsonl").exists() or (self.run_dir / CHECKPOINTS).exists()
        ):
            raise CheckpointError(
                f"{self.run_dir} already holds a run; continue it with marft train --resume {self.run_dir}, "
                "or give another --out"
            )
        self.governor = ThreadGovernor.for_run(cfg.run.torch_threads)
        self.threads = self.governor.threads
        seed_everything(cfg.run.seed)
        # Envs first: a data problem is reported before anything is written or loaded.
        envs = build_envs(resolved, cfg.env.n_envs)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        manifest = verify_checkpoint(ckpt) if ckpt is not None else {}
        start = manifest.get("iteration", 0)
        # Trackers open before the model loads: a tracker that cannot (no W&B login) fails fast.
        name = cfg.run.name or self.run_dir.resolve().name
        info = RunInfo(name, self.run_dir, to_dict(cfg), start_iteration=start)
        trackers = TrackerSet(cfg.run, info, manifest.get("loggers", {}), resolved.graph.roles)
        try:
            self.sink = MetricsSink(self.run_dir, start, trackers)
            self._build(resolved, envs, ckpt)
        except BaseException as e:
            self.close()
            trackers.close("killed" if isinstance(e, KeyboardInterrupt) else "failed")
            raise

    def _build(self, resolved: Resolved, envs: EnvCopies, ckpt: Path | None) -> None:
        """The model, the sampler, the backend and the learner; a checkpoint restored."""
        cfg = self.cfg
        self.peers = LearnerPeers.build(cfg, resolved.device)
        remote = ray_sampler(cfg) if cfg.run.ray.enabled else None
        self.parts = build_training(resolved, envs, remote_sampler=remote, dp=self.peers.dp)
        if ckpt is not None:
            try:
                self._restore(ckpt)
            except (ValueError, KeyError, RuntimeError) as e:  # a checkpoint that does not fit this config
                raise CheckpointError(f"cannot resume from {ckpt}: {e}") from None
        self.peers.sync_from(self.parts.model, self.parts.learner)
        self.rows = self.sink.rows_before(self.state.iteration)
        self.sink.catch_up(self.rows)

    def _restore(self, ckpt: Path) -> None:
        parts = self.parts
        load_adapter_weights(parts.model, ckpt)
        optim, state, value_head = load_trainer_files(ckpt)
        if parts.model.value_head is not None:
            if value_head is None:
                raise ValueError(
                    f"{ckpt} has no value head but algorithm {self.cfg.algorithm.name} needs one"
                )
            parts.model.value_head.load_state_dict(value_head)
        parts.learner.load_state_dict(optim)
        parts.sampler.load_state_dict(state["collector"])
        set_rng_state(state["rng"])
        self.state = RunState.from_state_dict(state)
        # An engine with its own copy of the weights (vLLM, rollout workers) receives the restored ones.
        parts.backend.update_weights(self.state.version, parts.model.adapter_weights)
        self.checkpoint = ckpt

    @property
    def recompute_behaviour(self) -> bool:
        """Asynchronous rollouts whose behaviour log-probs the learner recomputes."""
        rollouts = self.cfg.run.ray.async_
        return rollouts.enabled and rollouts.behaviour_logprobs == "recompute"

    @property
    def steps_per_rollout(self) -> int:
        """``run.steps_per_iter`` team steps, or up to ``env.horizon`` for whole-episode collection."""
        return self.cfg.env.horizon if self.parts.algorithm.episodic else self.cfg.run.steps_per_iter

    def train(self) -> TrainResult:
        """Run the remaining iterations, checkpointing every ``run.checkpoint_every`` and at the end.

        Raises:
            TrainingStopped: a signal arrived (a checkpoint was saved first), or the run hit
                ``run.max_nonfinite_in_row`` or ``env.max_failure_rate``.
        """
        status = "failed"
        try:
            with self.signals:
                result = self._loop()
            status = "finished"
            return result
        except TrainingStopped as e:  # by a signal, or by a fault
            status = "failed" if e.exit_code < 128 else "killed"
            raise
        except KeyboardInterrupt:  # a second Ctrl-C
            status = "killed"
            raise
        finally:
            try:
                self.close()
            finally:
                self.sink.close(status)

    def close(self) -> None:
        """Stop what the run started outside this process (rollout workers, learner actors)."""
        if self.parts is not None:
            self.parts.sampler.close()
        self.peers.close()

    def run_iteration(self, iteration: int) -> IterationStats:
        """Collect, score, advantages, critic, policy: one iteration, each phase timed. The
        generation backend then receives the new adapter version."""
        parts = self.parts
        learner = parts.learner
        meter = PhaseMeter(before_phase=self.governor.adapt if self.governor is not None else None)
        with meter.phase("collect"):
            trajectory = parts.sampler.collect(self.steps_per_rollout)
        if self.recompute_behaviour and isinstance(parts.sampler, StaleSampler):
            with meter.phase("behaviour"):  # the stale agents' log-probs under their sampling adapters
                trajectory = parts.scorer.behaviour_logprobs(trajectory, parts.sampler.behaviour_adapters())
        with self.peers.bracket(trajectory, iteration, self.checkpoint, self.run_dir):
            with meter.phase("score"):
                scores = parts.scorer.score(trajectory, learner.roles_to_train(iteration))
            with meter.phase("advantages"):
                targets = learner.targets(trajectory, scores)
            with meter.phase("critic"):
                critic = learner.fit_critic(targets)
            with meter.phase("policy"):
                policy = learner.update_policy(trajectory, scores, targets, iteration)
        with meter.phase("sync"):
            self.state.version += 1
            parts.backend.update_weights(self.state.version, parts.model.adapter_weights, policy.trained)
        collect = CollectStats.of(trajectory, parts.sampler.last_metrics)
        release_free_memory()
        return IterationStats(
            trajectory,
            collect,
            score=scores.stats,
            advantages=targets.stats,
            critic=critic,
            policy=policy,
            timings=meter.seconds,
            memory=meter.metrics(),
            torch_threads=meter.mean_threads(),
        )

    def _loop(self) -> TrainResult:
        cfg = self.cfg
        start = time.perf_counter() - self.state.elapsed_s
        progress = Progress(self.state.iteration, cfg.run.iterations, cfg.run.progress)
        verb = f"resuming at iteration {self.state.iteration}" if self.resume else "training"
        progress.note(
            f"{verb} {', '.join(self.parts.graph.roles)} on {self.parts.model.device} with "
            f"{self.threads} CPU threads; run directory {self.run_dir}"
        )
        for it in progress:
            if self.budget.spent(self.state):
                progress.say(f"token budget spent ({self.state.generated_tokens} generated tokens)")
                break
            stats = self.run_iteration(it)
            self._count(it, stats, time.perf_counter() - start)
            row = metrics_row(it, self.state, stats, self._carried)
            row.update(guard_metrics(self.rows, row, cfg.reward.guard))
            t0 = time.perf_counter()
            self.rows.append(row)
            self.sink.log(row, stats.trajectory.transcripts)
            self._carried = {"time_log_s": time.perf_counter() - t0, "time_checkpoint_s": 0.0}
            progress.show(row, stats.policy.trained, self.budget.progress(self.state))
            self._after_iteration(stats, progress)
        progress.close()
        return self._finish()

    def _count(self, iteration: int, stats: IterationStats, elapsed: float) -> None:
        """The run's counters after ``iteration``."""
        self.state.iteration = iteration + 1
        self.state.env_steps += stats.collect.env_steps
        self.state.generated_tokens += stats.collect.generated_tokens
        self.state.elapsed_s = elapsed

    def _after_iteration(self, stats: IterationStats, progress: Progress) -> None:
        """Checkpoint when due (timed into the next row), and stop on a fault or a signal."""
        cfg = self.cfg
        done = self.state.iteration
        fault = check_faults(done - 1, stats, self.state.nonfinite_in_row, cfg)
        every = cfg.run.checkpoint_every
        last = done == cfg.run.iterations or self.budget.spent(self.state)
        stop = self.signals.received is not None
        if fault or stop or last or (every and done % every == 0):
            t0 = time.perf_counter()
            self.save()
            self._carried["time_checkpoint_s"] = time.perf_counter() - t0
        if fault:
            progress.close()
            raise TrainingStopped(f"{fault}; last checkpoint: {self.checkpoint}", self.checkpoint, 1)
        if stop:
            progress.close()
            raise TrainingStopped(
                f"stopped by {self.signals.name} after iteration {done}; checkpoint saved at "
                f"{self.checkpoint}; continue with: marft train --resume {self.run_dir}",
                self.checkpoint,
                128 + self.signals.received,
            )

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
        state = self.state.state_dict()
        if iteration is not None:
            state["iteration"] = iteration
        state["rng"] = rng_state()
        state["collector"] = self.parts.sampler.state_dict()
        self.checkpoint = save_checkpoint(
            self.run_dir,
            self.parts.model,
            self.parts.learner.state_dict(),
            state,
            iteration=state["iteration"],
            env_steps=self.state.env_steps,
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
