"""What a collect phase reports: :class:`CollectStats`, built from its trajectory and the
sampler's own counters, and turned into the metrics row's rollout columns."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from marft.rollout.trajectory import Trajectory


@dataclass
class CollectStats:
    """One collect phase in numbers.

    Attributes:
        env_steps: team steps taken (idle steps of finished episodes do not count).
        generated_tokens: every agent's sampled tokens.
        episode_returns: team return of each episode that ended.
        episodes_failed: episodes dropped because the env raised.
        timings: seconds inside collection (``generate``, ``env``).
        env: the envs' counters, summarised (``X.sum`` / ``X.n`` pairs as means).
        routes: routing teams' route shares and counts (empty for static teams).
        sampler: the sampler's own counters (rollout workers'; empty in process).
    """

    env_steps: int
    generated_tokens: int
    episode_returns: list[float]
    episodes_failed: int
    timings: dict[str, float] = field(default_factory=dict)
    env: dict[str, float] = field(default_factory=dict)
    routes: dict[str, float] = field(default_factory=dict)
    sampler: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, trajectory: Trajectory, sampler: Mapping[str, float]) -> CollectStats:
        """The stats of ``trajectory``, with the counters the sampler reported for it."""
        return cls(
            env_steps=trajectory.env_steps,
            generated_tokens=sum(int(a.response_mask.sum()) for a in trajectory.agents),
            episode_returns=list(trajectory.episode_returns),
            episodes_failed=trajectory.failed_episodes,
            timings=dict(trajectory.timings),
            env=trajectory.env_summary(),
            routes=trajectory.route_summary(),
            sampler=dict(sampler),
        )

    @property
    def episode_return(self) -> float:
        """The mean return of the episodes that ended (NaN when none did). ``fsum`` is exact, so
        the mean does not depend on the order episodes arrive from rollout workers."""
        returns = self.episode_returns
        return math.fsum(returns) / len(returns) if returns else float("nan")

    def metrics(self) -> dict[str, float]:
        """The row's rollout columns: the mean return, episodes, failures, the collection's own
        ``time_<part>_s``, the env counters and the routes (the sampler's counters are
        :attr:`sampler`)."""
        return {
            "episode_return": self.episode_return,
            "episodes": len(self.episode_returns),
            "episodes_failed": self.episodes_failed,
            **{f"time_{k}_s": v for k, v in self.timings.items()},
            **self.env,
            **self.routes,
        }
