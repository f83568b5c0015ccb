"""Composition in one place: check a config once, then build what a run needs from it.

``marft train``, ``marft eval`` and ``marft export`` (and the Python API) all go through here:
:func:`resolve` checks a config against the registries and across sections once and returns a
:class:`Resolved` (the team graph, the algorithm, which optional protocols the env class keeps, the
checked backend class, the device and dtype); the builders take it and make the env copies, the one
base model with an adapter per agent (and a value head when the algorithm's estimator needs a
critic), the judges, the generation backend, the collector, the scorer and the learner. This is the
only package below the trainer that knows every layer, and the only place that asks a component
what it can do (:mod:`marft.compose.capabilities`).

Example:
    >>> cfg = load_config("demo", ["env.n_envs=8"])
    >>> resolved = resolve(cfg)               # what load_config resolved: not checked again
    >>> parts = build_training(resolved)      # doctest: +SKIP
    >>> trajectory = parts.sampler.collect(1)  # doctest: +SKIP
"""

from marft.compose.build import (
    TrainingParts,
    bind_judges,
    build_backend,
    build_base,
    build_collector,
    build_envs,
    build_generators,
    build_judge,
    build_team_model,
    build_training,
    make_env,
    tiny_corpus,
)
from marft.compose.capabilities import (
    backend_factory,
    capabilities_of,
    check_backend,
    check_env_copy,
    env_capabilities,
    protocol_members,
)
from marft.compose.resolution import Resolved, load_config, resolve, validate

__all__ = [
    "Resolved",
    "TrainingParts",
    "backend_factory",
    "bind_judges",
    "build_backend",
    "build_base",
    "build_collector",
    "build_envs",
    "build_generators",
    "build_judge",
    "build_team_model",
    "build_training",
    "capabilities_of",
    "check_backend",
    "check_env_copy",
    "env_capabilities",
    "load_config",
    "make_env",
    "protocol_members",
    "resolve",
    "tiny_corpus",
    "validate",
]
