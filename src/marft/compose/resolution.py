"""A config resolved once: checked, with its team graph, algorithm, env capabilities and backend
class, as one value (:class:`Resolved`) that every builder takes.

:func:`load_config` resolves the config it returns; resolving the same, unchanged config object
again (the trainer does) reuses that result, so a run checks its config and builds its team graph
once. A config changed since (``cfg.env.n_envs = 4``) is checked again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from marft.compose.capabilities import backend_factory, env_capabilities
from marft.compose.checks import check_config
from marft.config import Config, parse_config
from marft.envs.capabilities import EnvCapabilities
from marft.learner.spec import ResolvedAlgorithm
from marft.models.loading import resolve_device, resolve_dtype
from marft.rollout.backends import BackendFactory
from marft.team.graph import TeamGraph

_KEPT = "_marft_resolved"
"""Where a config object keeps its resolution (next to its fields, never one of them)."""


@dataclass(frozen=True)
class Resolved:
    """A checked config and what follows from it, made once per run by :func:`resolve`.

    Attributes:
        cfg: the config (checked: :func:`resolve`).
        graph: the team graph of ``cfg.team``.
        algorithm: ``cfg.algorithm`` resolved (its estimator and loss aggregation).
        env: which optional protocols the env class keeps.
        backend: the generation backend class of ``sampling.backend`` (checked against its
            protocols).
    """

    cfg: Config
    graph: TeamGraph
    algorithm: ResolvedAlgorithm
    env: EnvCapabilities
    backend: BackendFactory

    @cached_property
    def device(self) -> torch.device:
        """Where the team model runs (``model.device``; ``auto``: CUDA when available)."""
        return resolve_device(self.cfg.model.device)

    @cached_property
    def dtype(self) -> torch.dtype:
        """The base model's dtype on :attr:`device` (``model.dtype``; ``auto``: bfloat16 where the
        device has native bf16, float32 elsewhere and for ``tiny``; see
        :func:`~marft.models.loading.resolve_dtype`)."""
        return resolve_dtype(self.cfg.model.dtype, self.device, self.cfg.model.name)


class _Kept:
    """A config's resolution and a copy of the config it was made from. It stays with the config
    object only: a copy or a pickle of the config (a Ray actor's) gets an empty one and resolves
    again."""

    def __init__(self, snapshot: Config | None = None, resolved: Resolved | None = None) -> None:
        self.snapshot = snapshot
        self.resolved = resolved

    def __reduce__(self) -> tuple[type, tuple]:
        return _Kept, ()

    def of(self, cfg: Config) -> Resolved | None:
        """The kept resolution when it was made from ``cfg`` itself and ``cfg`` has not changed."""
        if self.resolved is None or self.resolved.cfg is not cfg or cfg != self.snapshot:
            return None
        return self.resolved


def resolve(cfg: Config) -> Resolved:
    """Check ``cfg`` against the registries and across sections, and resolve what follows from it.

    Looks up the env class and decides which optional protocols it keeps, looks up the backend
    class and checks it against its protocols, runs every check of :mod:`marft.compose.checks`
    and builds the team graph. An unchanged config resolved before is not checked again.

    Raises:
        ConfigError: on the first problem, naming the key and what is allowed.
    """
    kept = vars(cfg).get(_KEPT)
    if isinstance(kept, _Kept) and (done := kept.of(cfg)) is not None:
        return done
    graph = TeamGraph.from_config(cfg.team)
    env = env_capabilities(cfg.env.name)
    backend = backend_factory(cfg.sampling.backend)
    algorithm = check_config(cfg, env, backend)
    resolved = Resolved(cfg, graph, algorithm, env, backend)
    vars(cfg)[_KEPT] = _Kept(copy.deepcopy(cfg), resolved)
    return resolved


def validate(cfg: Config) -> None:
    """Check ``cfg`` (:func:`resolve`, for callers that need only the check).

    Raises:
        ConfigError: naming the key and what is allowed.
    """
    resolve(cfg)


def load_config(source: str | Path | None = "demo", overrides: list[str] | None = None) -> Config:
    """Read a YAML file or preset, apply ``key=value`` overrides, and check everything
    (:func:`marft.config.parse_config`, then :func:`resolve`), before anything heavy loads.

    Raises:
        ConfigError: on the first problem, naming the key.
    """
    cfg = parse_config(source, overrides)
    resolve(cfg)
    return cfg
