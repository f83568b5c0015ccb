"""Rollouts: the sampler and backend protocols, the HF backend (vLLM's is imported when chosen:
``marft.rollout.vllm_backend``), the collector, the trajectory."""

from marft.rollout.backends import (
    BASE,
    ROLLOUT_BACKENDS,
    BackendFactory,
    Generation,
    GenerationBackend,
    HFBackend,
    WeightSync,
)
from marft.rollout.collector import Collector
from marft.rollout.rewards import team_reward_vector
from marft.rollout.sampler import Sampler
from marft.rollout.trajectory import AgentActions, Prompts, Trajectory

__all__ = [
    "BASE",
    "ROLLOUT_BACKENDS",
    "AgentActions",
    "BackendFactory",
    "Collector",
    "Generation",
    "GenerationBackend",
    "HFBackend",
    "Prompts",
    "Sampler",
    "Trajectory",
    "WeightSync",
    "team_reward_vector",
]
