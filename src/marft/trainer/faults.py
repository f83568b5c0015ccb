"""When a run must stop by itself: an agent's update skipped for non-finite values too many
iterations in a row, or too many failed episodes in one iteration."""

from __future__ import annotations

from marft.config import Config
from marft.trainer.stats import IterationStats


def check_faults(
    iteration: int, stats: IterationStats, nonfinite_in_row: dict[str, int], cfg: Config
) -> str | None:
    """Count the non-finite skips in a row of each updated adapter and of the critic
    (``nonfinite_in_row`` is updated: a skip adds one, a finite update resets it) and the failed
    episodes of ``iteration``; a message saying what to do when the run must stop, else None."""
    policy = stats.policy
    updated = {who: who in policy.nonfinite for who in policy.trained}
    if stats.critic.fitted:
        updated["critic"] = stats.critic.nonfinite
    for who, skipped in updated.items():
        nonfinite_in_row[who] = nonfinite_in_row.get(who, 0) + 1 if skipped else 0
        if nonfinite_in_row[who] >= cfg.run.max_nonfinite_in_row:
            return (
                f"{who}'s loss or gradient was not finite in {nonfinite_in_row[who]} iterations "
                f"in a row (run.max_nonfinite_in_row); lower algorithm.policy_lr or raise "
                f"algorithm.max_grad_norm's strictness, and resume"
            )
    failed = stats.collect.episodes_failed
    total = len(stats.collect.episode_returns) + failed
    if failed and failed > cfg.env.max_failure_rate * total:
        return (
            f"{failed} of {total} episodes failed in iteration {iteration} "
            f"(env.max_failure_rate {cfg.env.max_failure_rate}); the log above shows the env's errors"
        )
    return None
