"""Which optional protocols an env class and a backend class keep: decided here, once per run.

This is the only place in marft that asks a component what it can do. An env class keeps an
optional protocol of :mod:`marft.envs.capabilities` when it defines all of the protocol's
methods; one that defines some but not all is a config error naming what is missing. A backend
class must keep :class:`~marft.rollout.backends.BackendFactory` and its instances
:class:`~marft.rollout.backends.GenerationBackend` whole. The answers travel as plain values
(:class:`~marft.envs.capabilities.EnvCapabilities`, the checked backend class), so nothing
downstream probes.
"""

from __future__ import annotations

import inspect
from typing import Any, Generic, Protocol

from marft.compose.checks import check_choice
from marft.config import ConfigError
from marft.envs.base import Env, env_class
from marft.envs.capabilities import (
    AnswerMatchingEnv,
    BatchedEnv,
    EnvCapabilities,
    EvaluableEnv,
    JudgeableEnv,
    MeteredEnv,
    RewardCheckedConfig,
    StatefulEnv,
    TaskEnv,
    TeamAwareEnv,
    TeamCheckedConfig,
    VocabularyEnv,
)
from marft.rollout.backends import ROLLOUT_BACKENDS, BackendFactory, GenerationBackend

ENV_PROTOCOLS: dict[str, type] = {
    "stateful": StatefulEnv,
    "metered": MeteredEnv,
    "batched": BatchedEnv,
    "team_aware": TeamAwareEnv,
    "judgeable": JudgeableEnv,
    "evaluable": EvaluableEnv,
    "answer_matching": AnswerMatchingEnv,
    "vocabulary": VocabularyEnv,
    "tasks": TaskEnv,
}
""":class:`EnvCapabilities` field -> the optional env protocol it records (kept by its methods)."""


def protocol_members(protocol: type) -> tuple[list[str], list[str]]:
    """``(methods, attributes)`` that ``protocol`` (and its protocol bases) declares: methods are
    defined in its body, attributes only annotated (an instance may set them in its constructor)."""
    methods: list[str] = []
    attributes: list[str] = []
    for base in reversed(protocol.__mro__):
        if base in (object, Protocol, Generic):
            continue
        annotated = inspect.get_annotations(base)
        attributes += [n for n in annotated if not n.startswith("_") and n not in attributes]
        defined = [n for n in vars(base) if not n.startswith("_") and n not in annotated]
        methods += [n for n in defined if n not in methods]
    return methods, attributes


def _claims(cls: type, protocol: type, what: str, key: str) -> bool:
    """Whether ``cls`` defines the methods of ``protocol``; some but not all is an error."""
    methods, _ = protocol_members(protocol)
    have = [m for m in methods if callable(getattr(cls, m, None))]
    if have and len(have) < len(methods):
        missing = [m for m in methods if m not in have]
        raise ConfigError(
            key,
            f"{what} has {', '.join(have)} but no {', '.join(missing)}: the {protocol.__name__} protocol "
            f"({protocol.__module__}) needs {', '.join(methods)}; define {', '.join(missing)} "
            f"(or remove {', '.join(have)})",
        )
    return bool(have)


def _require(target: Any, protocol: type, what: str, key: str, attributes: bool = True) -> None:
    """``target`` has every member of ``protocol`` (``attributes``: the annotated ones too), else an
    error naming the missing ones."""
    methods, annotated = protocol_members(protocol)
    names = methods + (annotated if attributes else [])
    missing = [n for n in names if not hasattr(target, n)]
    if missing:
        raise ConfigError(
            key,
            f"{what} has no {', '.join(missing)}: the {protocol.__name__} protocol ({protocol.__module__}) "
            f"needs {', '.join(names)}; define {', '.join(missing)}",
        )


def env_capabilities(name: str) -> EnvCapabilities:
    """What the env class of ``env.name`` can do (:func:`capabilities_of`).

    Raises:
        ConfigError: on ``env.name``: the class cannot be found, lacks ``reset`` or ``step`` (the
            :class:`~marft.envs.base.Env` protocol), or keeps an optional protocol partly.
    """
    try:
        cls = env_class(name)
    except (KeyError, ImportError, AttributeError) as e:
        raise ConfigError("env.name", str(e).strip("'\"")) from None
    _require(cls, Env, f"env class {cls.__module__}.{cls.__qualname__}", "env.name")
    return capabilities_of(cls, name)


def capabilities_of(cls: type, name: str | None = None) -> EnvCapabilities:
    """Which optional env protocols ``cls`` keeps (``name``: its ``env.name``, for messages).

    Raises:
        ConfigError: ``cls`` defines some but not all methods of a protocol (the message names them).
    """
    what = f"env class {cls.__module__}.{cls.__qualname__}"
    config_class = getattr(cls, "Config", None)  # ConfiguredEnv
    claims = {field: _claims(cls, protocol, what, "env.name") for field, protocol in ENV_PROTOCOLS.items()}
    return EnvCapabilities(
        cls=cls,
        name=name or cls.__qualname__,
        config_class=config_class,
        concurrent=bool(getattr(cls, "concurrent_steps", False)),  # ConcurrentEnv
        team_check=_hook(config_class, TeamCheckedConfig),
        reward_check=_hook(config_class, RewardCheckedConfig),
        **claims,
    )


def _hook(config_class: type | None, protocol: type) -> Any:
    """The one method of a config-class ``protocol`` that ``config_class`` defines, else None."""
    (method,), _ = protocol_members(protocol)
    return getattr(config_class, method, None) if config_class is not None else None


def check_env_copy(env: Any, caps: EnvCapabilities) -> None:
    """The attributes of the protocols ``caps`` records that an instance sets (an evaluable env's
    ``problems``), checked on one built copy.

    Raises:
        ConfigError: a member is missing (the message names it).
    """
    what = f"env {caps.name!r}"
    for field, protocol in ENV_PROTOCOLS.items():
        if getattr(caps, field):
            _require(env, protocol, what, "env.name")


def backend_factory(name: str) -> BackendFactory:
    """The backend class of ``sampling.backend``, checked against its protocols: the class keeps
    :class:`~marft.rollout.backends.BackendFactory` and defines the methods of
    :class:`~marft.rollout.backends.GenerationBackend` (its instances' attributes are checked by
    :func:`check_backend`).

    Raises:
        ConfigError: on ``sampling.backend``: an unknown name (the message lists the choices), or a
            missing member (named).
    """
    check_choice(ROLLOUT_BACKENDS, name, "sampling.backend", "backend")
    cls = ROLLOUT_BACKENDS.get(name)
    what = f"rollout backend {name!r} ({cls.__module__}.{cls.__qualname__})"
    _require(cls, BackendFactory, what, "sampling.backend")
    _require(cls, GenerationBackend, what, "sampling.backend", attributes=False)
    return cls


def check_backend(backend: Any, name: str) -> GenerationBackend:
    """A built backend has every member of :class:`~marft.rollout.backends.GenerationBackend`
    (``device`` and ``shares_weights`` too); returns it, typed.

    Raises:
        ConfigError: on ``sampling.backend``: a missing member (named).
    """
    _require(backend, GenerationBackend, f"the backend {name!r} built", "sampling.backend")
    return backend
