"""The ``run.ray`` section: rollout workers and learners on Ray (one process when ``address`` is null)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from marft.config.errors import _check


@dataclass
class AsyncConfig:
    """``run.ray.async``: rollouts that overlap training (see ``docs/scaling.md``).

    With ``max_staleness`` S >= 1 the rollout workers keep up to S collections in flight: while
    the learner trains on one, they sample the next with the adapters they hold. A trajectory is
    used when every agent's adapter version in it is at most S behind the learner's; older ones
    are dropped (``stale_dropped``) and collected again. The learner recomputes each agent's
    log-probs under its current adapters (the proximal policy the ratio is clipped around) and
    weights the advantages by the truncated importance ratio to the sampler's log-probs
    (``algorithm.rollout_correction: tis``): decoupled PPO.
    """

    max_staleness: int = 0
    """S: how many adapter versions a trajectory may lag the learner's (0: synchronous, as
    without this section)."""
    behaviour_logprobs: Literal["sampler", "recompute"] = "sampler"
    r"""The behaviour policy's log-probs in the importance ratio: the ``sampler``'s own (free; a
    separate engine such as vLLM rounds differently), or ``recompute``\ d by the learner under the
    adapters each stale agent was sampled with (one more forward per stale agent)."""

    def __post_init__(self) -> None:
        _check(self.max_staleness >= 0, "max_staleness", "must be >= 0 (0: synchronous rollouts)")

    @property
    def enabled(self) -> bool:
        return self.max_staleness > 0


@dataclass
class RayConfig:
    """Where a run's rollouts (and learners) live. Without an ``address`` nothing changes: one process.

    Every rollout worker is a Ray actor with its own frozen base, the team's adapters and
    ``env.n_envs / rollout_workers`` env copies; after each update only the changed adapters are
    sent to it. See ``docs/scaling.md``.
    """

    address: str | None = None
    """null: no Ray (one process); ``local``: start a Ray instance on this machine; else the
    address of a running cluster (``auto``, ``HOST:6379`` or ``ray://HOST:10001``)."""
    rollout_workers: int = 1
    """K rollout workers; ``env.n_envs`` (whole groups for group-relative algorithms) is split evenly."""
    learners: int = 1
    """G data-parallel learners: the driver is learner 0, and G - 1 Ray actors join it in a
    ``torch.distributed`` group; every minibatch is shared among them and gradients are summed."""
    learner_cpus: float = 1.0
    """CPUs Ray reserves for each extra learner (its torch threads follow)."""
    learner_gpus: float = 0.0
    """GPUs per extra learner (the driver uses ``model.device``)."""
    learner_timeout_s: float = 300.0
    """How long a learner waits for the others in a collective before the run stops."""
    worker_cpus: float = 1.0
    """CPUs Ray reserves for each rollout worker (its torch threads follow)."""
    worker_gpus: float = 0.0
    """GPUs per rollout worker (fractions colocate workers on one GPU)."""
    placement: str = "pack"
    """``pack``: workers on as few nodes as possible; ``spread``: one per node where possible."""
    max_restarts: int = 3
    """How often Ray restarts a rollout worker that died (its iteration is redone each time)."""
    async_: AsyncConfig = field(default_factory=AsyncConfig, metadata={"key": "async"})
    """``run.ray.async`` (``async`` is a Python keyword, hence the field's name): rollouts that
    overlap training with bounded staleness."""

    def __post_init__(self) -> None:
        _check(self.rollout_workers >= 1, "rollout_workers", "must be >= 1")
        _check(self.learners >= 1, "learners", "must be >= 1")
        _check(self.learner_cpus > 0, "learner_cpus", "must be > 0")
        _check(self.learner_gpus >= 0, "learner_gpus", "must be >= 0")
        _check(self.learner_timeout_s > 0, "learner_timeout_s", "must be > 0")
        _check(self.worker_cpus > 0, "worker_cpus", "must be > 0")
        _check(self.worker_gpus >= 0, "worker_gpus", "must be >= 0")
        _check(self.placement in ("pack", "spread"), "placement", "must be 'pack' or 'spread'")
        _check(self.max_restarts >= 0, "max_restarts", "must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.address is not None
