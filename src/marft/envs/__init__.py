"""Environments: the protocol, the registry and the built-in envs."""

from marft.envs import experts as _experts  # noqa: F401  (registration)
from marft.envs import signal as _signal  # noqa: F401  (registration)
from marft.envs.base import ENVS, Env, Observation, StepResult, env_config_class, make_env
from marft.envs.code import env as _code  # noqa: F401  (registration)
from marft.envs.judged import env as _judged  # noqa: F401  (registration)
from marft.envs.math import env as _math  # noqa: F401  (registration)

__all__ = ["ENVS", "Env", "Observation", "StepResult", "env_config_class", "make_env"]
