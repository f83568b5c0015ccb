"""Rollouts: generation backends and the collector (envs x team -> trajectories)."""

from marft.rollout.backends import ROLLOUT_BACKENDS, Generation, HFBackend
from marft.rollout.collector import AgentSteps, Collector, Rollout, team_reward_vector

__all__ = [
    "ROLLOUT_BACKENDS",
    "AgentSteps",
    "Collector",
    "Generation",
    "HFBackend",
    "Rollout",
    "team_reward_vector",
]
