"""Typed, validated configuration.

A YAML file (or a built-in preset) becomes a tree of dataclasses. Every key is checked against the
dataclass fields before anything heavy is loaded: an unknown key, a wrong type or an out-of-range
value raises :class:`ConfigError` naming the dotted key and what is allowed.

This module imports nothing of marft: it is the bottom layer. Checks against the registries
(algorithm, env and backend names, the team graph) live in :mod:`marft.compose`.

Example:
    >>> cfg = parse_config("demo", overrides=["algorithm.policy_lr=0.01"])
    >>> cfg.algorithm.policy_lr
    0.01
"""

from marft.config.loading import apply_override, from_dict, parse_config, preset_names, to_dict
from marft.config.reward import GuardConfig, JudgeConfig, RewardConfig
from marft.config.scale import RayConfig
from marft.config.sections import (
    AgentConfig,
    AlgorithmConfig,
    Config,
    ConfigError,
    EnvConfig,
    LoraSettings,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    TeamConfig,
    TinyModelConfig,
    VLLMConfig,
)
from marft.config.team import DONE, RANDOM, RoutingConfig
from marft.config.trackers import LoggerName, MlflowConfig, TrackioConfig, WandbConfig

__all__ = [
    "AgentConfig",
    "AlgorithmConfig",
    "Config",
    "ConfigError",
    "DONE",
    "RANDOM",
    "EnvConfig",
    "GuardConfig",
    "JudgeConfig",
    "LoggerName",
    "LoraSettings",
    "MlflowConfig",
    "ModelConfig",
    "RayConfig",
    "RewardConfig",
    "RoutingConfig",
    "RunConfig",
    "SamplingConfig",
    "TeamConfig",
    "TinyModelConfig",
    "TrackioConfig",
    "VLLMConfig",
    "WandbConfig",
    "apply_override",
    "from_dict",
    "parse_config",
    "preset_names",
    "to_dict",
]
