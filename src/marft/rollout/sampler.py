"""The sampler protocol: what the trainer collects trajectories from.

Two samplers keep it: the in-process :class:`~marft.rollout.collector.Collector` (env copies, the
team and a generation backend in this process) and the Ray rollout workers'
:class:`~marft.distributed.rollout.RayRollout`. The trainer calls ``collect`` once an iteration,
reads ``last_metrics`` into the iteration's metrics row, saves and restores the sampler with
``state_dict`` / ``load_state_dict`` in every checkpoint, and ``close``\\ s it when the run ends.
Whatever receives the learner's weights after an update is a separate protocol,
:class:`~marft.rollout.backends.WeightSync` (the local generation backend, or ``RayRollout``
itself); a sampler that keeps both is a :class:`RemoteSampler`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from marft.rollout.backends import WeightSync
from marft.rollout.trajectory import Trajectory


@runtime_checkable
class Sampler(Protocol):
    """Collects the team's trajectories for training."""

    @property
    def last_metrics(self) -> dict[str, float]:
        """The sampler's own counters of the last collection and weight update, for the metrics
        row (rollout workers: restarts, bytes moved; in process: none)."""
        ...

    def collect(self, steps: int) -> Trajectory:
        """Run ``steps`` team steps in every env copy (episodic algorithms: at most ``steps``)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue collecting exactly (saved in every checkpoint)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what :meth:`state_dict` returned (on resume)."""
        ...

    def close(self) -> None:
        """Stop what the sampler started outside this process (may do nothing)."""
        ...


@runtime_checkable
class RemoteSampler(Sampler, WeightSync, Protocol):
    """A sampler that holds its own copy of the weights, so it also receives every update (the Ray
    rollout workers): one object stands for the collector and the backend of a one-process run."""


@runtime_checkable
class StaleSampler(Protocol):
    """A sampler whose trajectories may have been sampled with older adapters than the learner's
    (asynchronous rollouts): it tells which, so that the learner can recompute the behaviour
    log-probs under them (``run.ray.async.behaviour_logprobs: recompute``)."""

    def behaviour_adapters(self) -> dict[str, dict[str, Any]]:
        """Per adapter behind the learner's in the last collected trajectory, the weights it was
        sampled with (PEFT tensors by name, as ``adapter_weights`` gives them); empty when every
        adapter in it is the learner's."""
        ...
