"""Rollouts that overlap training (``run.ray.async.max_staleness`` S >= 1): the rollout workers keep
up to S collections in flight while the learner trains.

How a run goes with S = 1 (``C_i``: the collection the learner trains on in iteration ``i``):

- iteration 0: ``C_0`` is launched and awaited; ``C_1`` is launched at once, with the same adapters,
  and the learner trains on ``C_0`` while the workers sample ``C_1``;
- after the update, the new adapters are sent without waiting: a Ray actor runs its calls in the
  order they were made, so they load after ``C_1`` and before ``C_2``;
- iteration ``i``: ``C_i`` (sampled one version behind the learner) is taken, ``C_{i+1}`` launched.

With S in flight, a trajectory lags the learner by up to S versions of each adapter. The version
is counted per adapter: an adapter that was not trained (a frozen agent, agent-by-agent training)
keeps its version, so its actions are never stale. A trajectory with an adapter more than S behind
(after a resume with a smaller S, or several updates between collections) is dropped, counted
(``stale_dropped``) and collected again with the current adapters.

The learner's side is the decoupled PPO of AReaL (Fu et al. 2025): the scoring phase recomputes
every agent's log-probs under the learner's current adapters (the proximal policy: the PPO ratio is
clipped around it), and ``algorithm.rollout_correction: tis`` weights each advantage by the
truncated ratio of that proximal policy to the sampler's (behaviour) log-probs, per agent.

Exactness: every collection is a pure function of its env copies' state and the adapters it was
launched with. A checkpoint does not wait for the collections in flight: it saves the env copies'
state from before them and, for each, its versions and adapters; a resumed run launches them again
and gets the same trajectories, as the uninterrupted run would have. A worker that dies is given
its env copies' state from before its oldest collection in flight, and every collection it had in
flight is launched again, each with the adapters it was first launched with.
"""

from __future__ import annotations

import collections
import logging
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from marft.config import Config
from marft.distributed.cluster import cpu_adapters
from marft.distributed.rollout import RayRollout, StaleWeightsError
from marft.rollout.merge import join_collector_states, merge_trajectories
from marft.rollout.trajectory import Trajectory

log = logging.getLogger(__name__)

IN_FLIGHT = "async_in_flight"
"""The collector state's key for what an asynchronous run had in flight (not a per-env-copy list)."""


def staleness(current: Mapping[str, int], sampled: Mapping[str, int]) -> dict[str, int]:
    """Per adapter, how many versions the adapters a trajectory was ``sampled`` with lag the
    learner's ``current`` ones (0: sampled with the adapter the learner holds)."""
    return {name: current[name] - sampled.get(name, 0) for name in current}


@dataclass
class Collected:
    """A collection's outcome on every worker.

    Attributes:
        parts: per worker, its trajectory.
        states: per worker, its collector state after the collection.
        seconds: per worker, the seconds it took.
    """

    parts: list[Trajectory]
    states: list[dict[str, Any]]
    seconds: list[float]


@dataclass
class Launch:
    """One collection in flight on every worker.

    Attributes:
        version: the learner's update count when it was launched (the workers hold it by then).
        versions: each adapter's version it samples with.
        held: each adapter's weights at those versions, in Ray's object store (what a restarted
            worker loads to collect it again).
        refs: per worker, the pending ``collect`` call (None once ``done``).
        steps: the team steps it collects.
        done: its outcome, once received (or restored from a checkpoint).
    """

    version: int
    versions: dict[str, int]
    held: dict[str, Any]
    steps: int
    refs: list[Any] = field(default_factory=list)
    done: Collected | None = None


class AsyncRayRollout(RayRollout):
    """:class:`~marft.distributed.rollout.RayRollout` with up to ``max_staleness`` collections in
    flight (see the module docstring).

    Args:
        cfg: the run's config (``run.ray`` and ``run.ray.async`` set).
        adapter_weights: ``adapter_weights(names)`` -> PEFT tensors per adapter (the learner's model).
        pad_id: the tokenizer's padding token (merging pads with it).
        group_size: env copies per group (1 for continuing collection).
        adapter_of: agent -> the adapter it runs (per-agent staleness is its adapter's).
    """

    def __init__(
        self,
        cfg: Config,
        adapter_weights: Callable[..., dict],
        pad_id: int,
        group_size: int,
        adapter_of: Mapping[str, str],
    ) -> None:
        import ray

        super().__init__(cfg, adapter_weights, pad_id, group_size)
        self.max_staleness = cfg.run.ray.async_.max_staleness
        self.adapter_of = dict(adapter_of)
        initial = cpu_adapters(adapter_weights(None))  # what every worker built: version 0
        self.held = {name: ray.put({name: tensors}) for name, tensors in initial.items()}
        self.adapter_versions = dict.fromkeys(initial, 0)
        self.in_flight: collections.deque[Launch] = collections.deque()
        self.stale_dropped = 0
        self._last: Launch | None = None  # what the last collected trajectory was sampled with

    # ------------------------------------------------------------------ what the trainer calls

    def update_weights(
        self, version: int, weights: Callable[..., dict], changed: Sequence[str] | None = None
    ) -> None:
        """Send the ``changed`` agents' adapters (None: all, as on a resume: no version moves) to
        every worker as ``version``, without waiting: each worker loads them after the collections
        it already has in flight."""
        import ray

        tensors = cpu_adapters(weights(changed))
        for name, t in tensors.items():
            self.held[name] = ray.put({name: t})
            if changed is not None:
                self.adapter_versions[name] += 1
        self.version = version
        refs = [self.held[name] for name in tensors]
        for w in self.workers:
            w.update_adapters.remote(version, *refs)
        size = sum(t.numel() * t.element_size() for a in tensors.values() for t in a.values())
        self._metrics["adapter_bytes_sent"] = float(size * len(self.workers))

    def collect(self, steps: int) -> Trajectory:
        """The oldest collection in flight (launched now if none is), once every adapter in it is
        at most ``max_staleness`` versions behind; up to ``max_staleness`` more stay in flight."""
        dropped = 0
        while True:
            if not self.in_flight:
                self._launch(steps)
            head = self.in_flight[0]
            while len(self.in_flight) <= self.max_staleness:
                self._launch(steps)  # sampled while the learner trains on ``head``
            done = self._receive(head)
            self.in_flight.popleft()
            lag = staleness(self.adapter_versions, head.versions)
            if max(lag.values(), default=0) <= self.max_staleness:
                break
            dropped += 1
            log.warning("a trajectory %s versions behind was dropped (run.ray.async)", lag)
        self.stale_dropped += dropped
        self._last = head
        trajectory = merge_trajectories(done.parts, [lo for lo, _ in self.slices], self.pad_id)
        trajectory.timings["worker_max"] = max(done.seconds)
        self._metrics = {
            "rollout_restarts": float(self.restarts),
            "trajectory_bytes": float(sum(len(pickle.dumps(p)) for p in done.parts)),
            "stale_dropped": float(dropped),
            "in_flight": float(len(self.in_flight)),
            **{f"staleness/{role}": float(lag[a]) for role, a in self.adapter_of.items()},
        }
        return trajectory

    def behaviour_adapters(self) -> dict[str, dict[str, Any]]:
        """Per adapter behind the learner's in the last collected trajectory, the weights it was
        sampled with (:class:`~marft.rollout.sampler.StaleSampler`)."""
        import ray

        last = self._last
        if last is None:
            return {}
        behind = [a for a, lag in staleness(self.adapter_versions, last.versions).items() if lag > 0]
        return {name: ray.get(last.held[name])[name] for name in behind}

    def state_dict(self) -> dict[str, Any]:
        """The collector state before the collections in flight, and those collections as what
        launches them again (versions, adapters, steps): a resumed run collects them again first,
        to the same trajectories. Nothing here waits for a worker."""
        import ray

        saved = [
            {
                "version": launch.version,
                "versions": dict(launch.versions),
                "held": {name: ray.get(ref)[name] for name, ref in launch.held.items()},
                "steps": launch.steps,
            }
            for launch in self.in_flight
        ]
        extra = {"launches": saved, "adapter_versions": dict(self.adapter_versions)}
        return {**join_collector_states(self.states), IN_FLIGHT: extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the workers' env copies, then launch the saved collections in flight again,
        each with the adapters it was first launched with (the trainer's sync of the current
        adapters that follows reaches the workers after them)."""
        import ray

        state = dict(state)
        extra = state.pop(IN_FLIGHT, None)
        super().load_state_dict(state)
        if extra is None:  # a checkpoint of a synchronous run: nothing was in flight
            return
        self.adapter_versions.update(extra["adapter_versions"])
        self.in_flight.clear()
        for saved in extra["launches"]:
            held = {name: ray.put({name: t}) for name, t in saved["held"].items()}
            launch = Launch(saved["version"], saved["versions"], held, saved["steps"])
            for w in self.workers:
                w.update_adapters.remote(launch.version, *held.values())
                launch.refs.append(w.collect.remote(launch.steps, launch.version))
            self.in_flight.append(launch)

    # ------------------------------------------------------------------ the pipeline

    def _launch(self, steps: int) -> None:
        """Start one collection on every worker with the adapters sent so far."""
        launch = Launch(self.version, dict(self.adapter_versions), dict(self.held), steps)
        launch.refs = [w.collect.remote(steps, self.version) for w in self.workers]
        self.in_flight.append(launch)

    def _receive(self, launch: Launch) -> Collected:
        """Wait for ``launch`` on every worker (launching it again where a worker died); its
        outcome. The collections before it must have been received."""
        import ray

        if launch.done is not None:
            return launch.done
        results: dict[int, tuple] = {}
        pending = dict(enumerate(launch.refs))
        while pending:
            for k, ref in list(pending.items()):
                try:
                    results[k] = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                    self._recover(k, e)  # every launch in flight on k is issued again
                    pending[k] = launch.refs[k]
                    continue
                del pending[k]
        parts = [results[k][0] for k in range(len(self.workers))]
        for part in parts:
            if part.version != launch.version:
                raise StaleWeightsError(
                    f"a trajectory of version {part.version} arrived; expected {launch.version}"
                )
        states = [results[k][1] for k in range(len(parts))]
        launch.done = Collected(parts, states, [r[2] for r in results.values()])
        launch.refs = []
        self.states = launch.done.states
        return launch.done

    def _recover(self, k: int, error: Exception) -> None:
        """Worker k died: wait for Ray's restart, give it its env copies' state from before its
        oldest collection in flight, and launch each of its collections in flight again with the
        adapters it was first launched with; then the current adapters."""
        self._restart(k, error)
        worker = self.workers[k]
        for launch in self.in_flight:
            if launch.done is None:
                worker.update_adapters.remote(launch.version, *launch.held.values())
                launch.refs[k] = worker.collect.remote(launch.steps, launch.version)
        worker.update_adapters.remote(self.version, *self.held.values())
