"""Environments: the protocol and its optional capabilities, the registry and the built-in envs."""

from marft.envs import experts as _experts  # noqa: F401  (registration)
from marft.envs import signal as _signal  # noqa: F401  (registration)
from marft.envs.base import ENVS, Env, Observation, StepResult, env_class
from marft.envs.capabilities import (
    AnswerMatchingEnv,
    BatchedEnv,
    ConcurrentEnv,
    ConfiguredEnv,
    EnvCapabilities,
    EvaluableEnv,
    JudgeableEnv,
    MeteredEnv,
    RewardCheckedConfig,
    StatefulEnv,
    TeamAwareEnv,
    TeamCheckedConfig,
    VocabularyEnv,
)
from marft.envs.code import env as _code  # noqa: F401  (registration)
from marft.envs.copies import EnvCopies
from marft.envs.judged import env as _judged  # noqa: F401  (registration)
from marft.envs.math import env as _math  # noqa: F401  (registration)

__all__ = [
    "ENVS",
    "AnswerMatchingEnv",
    "BatchedEnv",
    "ConcurrentEnv",
    "ConfiguredEnv",
    "Env",
    "EnvCapabilities",
    "EnvCopies",
    "EvaluableEnv",
    "JudgeableEnv",
    "MeteredEnv",
    "Observation",
    "RewardCheckedConfig",
    "StatefulEnv",
    "StepResult",
    "TeamAwareEnv",
    "TeamCheckedConfig",
    "VocabularyEnv",
    "env_class",
]
