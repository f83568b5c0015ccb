"""An iteration's typed stats, and the one function that turns them into a metrics row.

Every phase reports a dataclass: the collect phase :class:`~marft.rollout.stats.CollectStats`,
the learner's phases theirs (:mod:`marft.learner`); each knows its own metric columns
(``metrics()``). :func:`metrics_row` puts them into the row ``metrics.jsonl`` and the trackers
receive, with the run's counters and each phase's seconds and memory; the fault checks
(:mod:`marft.trainer.faults`) read the typed stats, not the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from marft.learner.stats import AdvantageStats, CriticStats, PolicyStats, ScoreStats
from marft.rollout.stats import CollectStats
from marft.rollout.trajectory import Trajectory
from marft.trainer.state import RunState


@dataclass
class IterationStats:
    """What one iteration produced before logging.

    Attributes:
        trajectory: what was collected (its transcripts are logged).
        collect, score, advantages, critic, policy: each phase's stats.
        timings: seconds of each phase (``trainer.PHASES``).
        memory: the memory columns (:class:`~marft.trainer.phases.PhaseMeter`).
        torch_threads: torch's CPU threads over the phases, time-weighted (they change between
            phases when another process takes cores: :class:`~marft.runtime.ThreadGovernor`);
            the row's ``torch_threads``, one of the measurements of this machine
            (``reporting.metrics.MEASURED``) that a reproduced run need not repeat.
    """

    trajectory: Trajectory
    collect: CollectStats
    score: ScoreStats
    advantages: AdvantageStats
    critic: CriticStats
    policy: PolicyStats
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    torch_threads: float | None = None


def metrics_row(
    iteration: int, state: RunState, stats: IterationStats, carried: dict[str, float]
) -> dict[str, Any]:
    """The metrics row of ``iteration`` (0-based): the run's counters after it, every phase's
    columns, and ``carried``, the previous iteration's log and checkpoint seconds (a row is written
    before its checkpoint, so that no iteration is ever logged twice)."""
    return {
        "iteration": iteration,
        "env_steps": state.env_steps,
        "generated_tokens": state.generated_tokens,
        "time_s": state.elapsed_s,
        "time_iter_s": sum(stats.timings.values()),
        **{f"time_{k}_s": v for k, v in stats.timings.items()},
        **stats.collect.metrics(),
        **carried,
        **stats.memory,
        **({"torch_threads": stats.torch_threads} if stats.torch_threads is not None else {}),
        **stats.advantages.metrics(),
        **stats.policy.metrics(),
        **stats.critic.metrics(),
        **stats.score.metrics(),
        **stats.collect.sampler,
    }
