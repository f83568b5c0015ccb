"""Environments: the protocol, the registry and the built-in envs."""

from marft.envs import signal as _signal  # noqa: F401  (registration)
from marft.envs.base import ENVS, Env, Observation, StepResult, env_config_class, make_env

__all__ = ["ENVS", "Env", "Observation", "StepResult", "env_config_class", "make_env"]
