"""When a run must stop by itself: an agent's update skipped for non-finite values too many
iterations in a row, or too many failed episodes in one iteration."""

from __future__ import annotations

from typing import Any

from marft.config import Config
from marft.rollout.trajectory import Trajectory


def check_faults(row: dict[str, Any], traj: Trajectory, in_row: dict[str, int], cfg: Config) -> str | None:
    """Count each agent's non-finite skips in a row (``in_row`` is updated) and the failed
    episodes; a message saying what to do when the run must stop, else None."""
    for key, value in row.items():
        if key.startswith("nonfinite_skip/"):
            who = key.split("/", 1)[1]
            in_row[who] = in_row.get(who, 0) + 1 if value else 0
            if in_row[who] >= cfg.run.max_nonfinite_in_row:
                return (
                    f"{who}'s loss or gradient was not finite in {in_row[who]} iterations "
                    f"in a row (run.max_nonfinite_in_row); lower algorithm.policy_lr or raise "
                    f"algorithm.max_grad_norm's strictness, and resume"
                )
    total = len(traj.episode_returns) + traj.failed_episodes
    if traj.failed_episodes and traj.failed_episodes > cfg.env.max_failure_rate * total:
        return (
            f"{traj.failed_episodes} of {total} episodes failed in iteration {row['iteration']} "
            f"(env.max_failure_rate {cfg.env.max_failure_rate}); the log above shows the env's errors"
        )
    return None
