"""Rollouts on Ray: K rollout workers, each a Ray actor with its own frozen base, the team's
adapters, a generation backend and a slice of the env copies.

:class:`RayRollout` stands where the one-process :class:`~marft.rollout.collector.Collector`
stands (``collect``, ``state_dict``, ``load_state_dict``, ``last_metrics``, ``close``: the
:class:`~marft.rollout.sampler.Sampler` protocol) and is also what receives the learner's weights
(:class:`~marft.rollout.backends.WeightSync`; ``shares_weights`` is False, so the scoring phase
recomputes old log-probs). What moves:

- learner -> workers, after each update: the changed agents' adapter tensors (PEFT format), put
  once into Ray's object store for all workers, with the new version number;
- workers -> learner: one :class:`~marft.rollout.trajectory.Trajectory` per worker (merged in env
  order by :func:`~marft.rollout.trajectory.merge_trajectories`) and each worker's collector
  state (per env copy: its random stream, its live episode and its env's state).

Every env copy draws from its own random stream (:mod:`marft.rollout.streams`), so what is sampled
does not depend on K. A worker that dies (Ray restarts it up to ``run.ray.max_restarts`` times) is
given its env copies' state from before the iteration and the current adapters, and the
iteration's collection is redone: nothing is logged twice and nothing is lost.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any

from marft.config import Config
from marft.distributed.cluster import ActorProcess, cpu_adapters, placement_options
from marft.rollout.merge import join_collector_states, merge_trajectories, split_collector_state
from marft.rollout.trajectory import Trajectory

log = logging.getLogger(__name__)


class StaleWeightsError(RuntimeError):
    """A worker was asked to sample with an adapter version it does not hold."""


class RolloutWorker(ActorProcess):
    """One rollout worker (run as a Ray actor): env copies ``[lo, hi)`` of the run.

    Args:
        cfg: the run's config.
        lo, hi: its env copies (global indices: they seed the copies' random streams).
        threads: torch threads for this process.
    """

    def __init__(self, cfg: Config, lo: int, hi: int, threads: int) -> None:
        from marft.compose import (
            bind_judges,
            build_backend,
            build_collector,
            build_envs,
            build_team_model,
            resolve,
        )
        from marft.distributed.cluster import actor_config
        from marft.runtime import configure_threads

        configure_threads(threads)
        resolved = resolve(actor_config(cfg))  # its own device: the config is resolved again here
        envs = build_envs(resolved, hi - lo)
        self.model = build_team_model(resolved, envs[0], with_critic=False)
        bind_judges(resolved, envs, self.model)
        self.backend = build_backend(resolved, self.model, envs[0])
        self.collector = build_collector(resolved, envs, self.model.tokenizer, self.backend, env_offset=lo)
        self.version = 0

    def state_dict(self) -> dict[str, Any]:
        return self.collector.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.collector.load_state_dict(state)

    def update_weights(self, version: int, weights: dict[str, dict[str, Any]]) -> int:
        """Load the adapters in ``weights`` (adapter -> PEFT tensors) as ``version``; returns its size in
        bytes."""
        self.model.set_adapter_weights(weights)
        self.backend.update_weights(version, lambda roles=None: weights, list(weights))
        self.version = version
        return sum(t.numel() * t.element_size() for w in weights.values() for t in w.values())

    def update_adapters(self, version: int, *parts: dict[str, dict[str, Any]]) -> int:
        """:meth:`update_weights` with the adapters in several parts (each adapter its own object
        in Ray's store: asynchronous rollouts keep them per version)."""
        return self.update_weights(version, {name: t for part in parts for name, t in part.items()})

    def collect(self, steps: int, version: int) -> tuple[Trajectory, dict[str, Any], float]:
        """``(trajectory, collector state after it, seconds)`` of one collection with ``version``.

        Raises:
            StaleWeightsError: this worker holds another adapter version.
        """
        if version != self.version:
            raise StaleWeightsError(f"worker holds adapter version {self.version}, asked for {version}")
        t0 = time.perf_counter()
        trajectory = self.collector.collect(steps)
        trajectory.version = self.version
        return trajectory.to("cpu"), self.collector.state_dict(), time.perf_counter() - t0


def env_slices(n_envs: int, workers: int, group_size: int = 1) -> list[tuple[int, int]]:
    """Split ``n_envs`` env copies into ``workers`` contiguous slices of whole groups, as even as
    possible: ``[(lo, hi), ...]``."""
    groups = n_envs // group_size
    if workers > groups:
        raise ValueError(f"{workers} rollout workers for {groups} env groups: each worker needs at least one")
    base, extra = divmod(groups, workers)
    bounds, lo = [], 0
    for k in range(workers):
        hi = lo + (base + (k < extra)) * group_size
        bounds.append((lo, hi))
        lo = hi
    return bounds


class RayRollout:
    """K Ray rollout workers as one :class:`~marft.rollout.sampler.Sampler` that also receives the
    learner's weights (:class:`~marft.rollout.backends.WeightSync`): a
    :class:`~marft.rollout.sampler.RemoteSampler` (see the module docstring).

    Args:
        cfg: the run's config (``run.ray`` set).
        adapter_weights: ``adapter_weights(names)`` -> PEFT tensors per adapter (the learner's model).
        pad_id: the tokenizer's padding token (merging pads with it).
        group_size: env copies per group (1 for continuing collection).
    """

    shares_weights = False

    def __init__(
        self, cfg: Config, adapter_weights: Callable[..., dict], pad_id: int, group_size: int = 1
    ) -> None:
        import ray

        from marft.distributed.cluster import ensure_ray

        self.cfg, self._weights, self.pad_id = cfg, adapter_weights, pad_id
        ensure_ray(cfg.run.ray.address)
        rc = cfg.run.ray
        self.slices = env_slices(cfg.env.n_envs, rc.rollout_workers, group_size)
        threads = max(1, int(rc.worker_cpus))
        actor = ray.remote(num_cpus=rc.worker_cpus, num_gpus=rc.worker_gpus)(RolloutWorker)
        self._group, self._placement = placement_options(rc)
        self.workers = [
            actor.options(max_restarts=rc.max_restarts, **self._placement(k)).remote(cfg, lo, hi, threads)
            for k, (lo, hi) in enumerate(self.slices)
        ]
        self.version = 0
        self.restarts = 0
        self.states = ray.get([w.state_dict.remote() for w in self.workers])
        self._metrics: dict[str, float] = {}

    @property
    def last_metrics(self) -> dict[str, float]:
        """Per iteration: ``rollout_restarts`` (so far), ``trajectory_bytes`` (workers -> learner,
        pickled) and ``adapter_bytes_sent`` (learner -> each worker, summed over workers)."""
        return self._metrics

    # ------------------------------------------------------------------ what the trainer calls

    def update_weights(
        self, version: int, weights: Callable[..., dict], changed: Sequence[str] | None = None
    ) -> None:
        """Send the ``changed`` agents' adapters (None: all) to every worker as ``version``."""
        import ray

        ref = ray.put(cpu_adapters(weights(changed)))
        self.version = version
        sent = 0.0
        for k, pending in enumerate([w.update_weights.remote(version, ref) for w in self.workers]):
            try:
                sent += ray.get(pending)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                self._recover(k, e)  # restarted with its env state and every adapter of this version
        self._metrics["adapter_bytes_sent"] = sent

    def collect(self, steps: int) -> Trajectory:
        """One collection on every worker, merged in env order; a worker that died is restarted
        by Ray, restored and asked again."""
        import ray

        pending = {k: self.workers[k].collect.remote(steps, self.version) for k in range(len(self.workers))}
        results: dict[int, tuple] = {}
        while pending:
            for k, ref in list(pending.items()):
                try:
                    results[k] = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                    self._recover(k, e)
                    pending[k] = self.workers[k].collect.remote(steps, self.version)
                    continue
                del pending[k]
        parts = [results[k][0] for k in range(len(self.workers))]
        for part in parts:
            if part.version != self.version:  # a worker never samples with a stale version by mistake
                raise StaleWeightsError(
                    f"a trajectory of version {part.version} arrived; expected {self.version}"
                )
        self.states = [results[k][1] for k in range(len(self.workers))]
        trajectory = merge_trajectories(parts, [lo for lo, _ in self.slices], self.pad_id)
        trajectory.timings["worker_max"] = max(results[k][2] for k in results)
        self._metrics = {
            "rollout_restarts": float(self.restarts),
            "trajectory_bytes": float(sum(len(pickle.dumps(p)) for p in parts)),
        }
        return trajectory

    def _recover(self, k: int, error: Exception) -> None:
        """Worker k died: wait for Ray's restart, give it its env copies' state from before this
        iteration and the current adapters."""
        import ray

        self._restart(k, error)
        ray.get(self.workers[k].update_weights.remote(self.version, cpu_adapters(self._weights(None))))

    def _restart(self, k: int, error: Exception) -> None:
        """Count worker k's death (too many stop the run), wait for Ray to restart it and give it
        its env copies' state as of ``self.states``."""
        import ray

        self.restarts += 1
        self._metrics["rollout_restarts"] = float(self.restarts)
        if self.restarts > self.cfg.run.ray.max_restarts * len(self.workers):
            raise RuntimeError(
                f"rollout worker {k} keeps dying ({self.restarts} restarts): {error}"
            ) from error
        log.warning(
            "rollout worker %d died (%s); restarting it and redoing its collection", k, type(error).__name__
        )
        deadline = time.monotonic() + 300
        while True:
            try:
                ray.get(self.workers[k].load_state_dict.remote(self.states[k]))
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def state_dict(self) -> dict[str, Any]:
        """The collector state of all env copies in env order (what one process would save)."""
        return join_collector_states(self.states)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ray

        self.states = split_collector_state(state, self.slices)
        ray.get([w.load_state_dict.remote(s) for w, s in zip(self.workers, self.states, strict=True)])

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([w.pid.remote() for w in self.workers])

    def worker_peak_rss_mb(self) -> list[float]:
        import ray

        return ray.get([w.peak_rss_mb.remote() for w in self.workers])

    def close(self) -> None:
        """Stop the rollout workers and free their placement group."""
        import ray

        for w in self.workers:
            ray.kill(w)
        ray.util.remove_placement_group(self._group)
