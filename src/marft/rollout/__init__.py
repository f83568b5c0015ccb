"""Rollouts: generation backends (a protocol and the HF backend), the collector, the trajectory."""

from marft.rollout.backends import BASE, ROLLOUT_BACKENDS, Generation, GenerationBackend, HFBackend
from marft.rollout.collector import Collector
from marft.rollout.rewards import team_reward_vector
from marft.rollout.trajectory import AgentActions, Prompts, Trajectory
from marft.rollout.vllm_backend import VLLMBackend

__all__ = [
    "BASE",
    "ROLLOUT_BACKENDS",
    "AgentActions",
    "Collector",
    "Generation",
    "GenerationBackend",
    "HFBackend",
    "Prompts",
    "Trajectory",
    "VLLMBackend",
    "team_reward_vector",
]
