"""The environment protocol.

An environment is any object with

* ``reset(seed) -> Observation``
* ``step(actions) -> StepResult`` where ``actions`` maps each role to its decoded text,

and optionally ``concurrent_steps = True`` (copies may step at once, on threads: :func:`step_all`),
``state_dict() -> dict`` / ``load_state_dict(state)`` for exact resume (without
them, checkpoints pickle the env's attributes), ``pop_metrics() -> dict[str, float]``: counters
since the last call (summed over env copies into each iteration's metrics row, e.g. the math env's
``grader_timeouts``; a pair ``X.sum`` / ``X.n`` becomes the mean ``X``: :func:`summarize_metrics`),
and a classmethod ``step_batch(envs, actions)`` that steps many copies at once (an env that
batches work across copies, such as a judge model's forward). Envs are found by registered name
(``env.name: signal``) or by ``package.module:Class``. An env class may carry a ``Config``
dataclass: its ``env.kwargs`` are then validated against it before any model loads, and the
instance is built as ``Class(config)``; otherwise as ``Class(**kwargs)``.

Example:
    >>> from marft.envs import make_env
    >>> env = make_env("signal", {"symbols": ["red", "blue"]})
    >>> obs = env.reset(seed=0)
    >>> result = env.step({"speaker": "x", "listener": "red"})
    >>> result.done
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from marft.registry import Registry


@dataclass
class Observation:
    """What the env shows the team at one step.

    Attributes:
        text: shown to every agent.
        private: extra text shown only to the named roles (e.g. a secret for one agent).
        next_agents: env routing (teams with ``team.routing``): the roles that act first on this
            observation, in place of ``team.routing.start``; None: the team decides.
    """

    text: str
    private: dict[str, str] = field(default_factory=dict)
    next_agents: list[str] | None = None


@dataclass
class StepResult:
    """The outcome of one team step.

    Attributes:
        observation: the next observation (ignored when ``done``; the env is reset).
        rewards: the team reward, or a reward per role.
        done: whether the episode ended after this step.
        info: anything worth logging (kept in transcripts).
        correct: whether the team's answer at this step is right, for envs with a notion of
            correct (None otherwise). ``marft eval`` reads accuracy and pass@k from it.
        answer: the team's final answer at this step, as the env understands it (``marft eval``'s
            majority vote groups samples by it, with the env's ``same_answer`` when it has one).
    """

    observation: Observation
    rewards: float | Mapping[str, float]
    done: bool
    info: dict[str, Any] = field(default_factory=dict)
    correct: bool | None = None
    answer: str | None = None


@runtime_checkable
class Env(Protocol):
    """A multi-agent text environment (one copy; the collector vectorises copies)."""

    def reset(self, seed: int | None = None) -> Observation: ...

    def step(self, actions: Mapping[str, str]) -> StepResult: ...


ENVS: Registry[type] = Registry("env")
MAX_STEP_THREADS = 64
"""Most env copies stepped at once by :func:`step_all` (their own work bounds itself further)."""


def step_all(envs: Sequence[Env], actions: Sequence[Mapping[str, str]]) -> list[StepResult | Exception]:
    """Step each env copy on its joint action; an env's exception is returned, not raised.

    Copies of one class with a ``step_batch`` classmethod step in one call of it (it returns a
    result or an exception per copy). Otherwise copies step one after another, or on threads when
    every copy's class sets ``concurrent_steps = True`` (an env whose step waits on other
    processes, such as the code env's sandbox; the results keep the copies' order, and each copy
    is stepped by one thread).
    """

    def one(i: int) -> StepResult | Exception:
        try:
            return envs[i].step(actions[i])
        except Exception as e:  # noqa: BLE001 (a user env: the caller drops the episode, not the run)
            return e

    batch = getattr(type(envs[0]), "step_batch", None) if envs else None
    if batch is not None and all(type(env) is type(envs[0]) for env in envs):
        return list(batch(envs, actions))
    if len(envs) > 1 and all(getattr(env, "concurrent_steps", False) for env in envs):
        with ThreadPoolExecutor(max_workers=min(len(envs), MAX_STEP_THREADS)) as pool:
            return list(pool.map(one, range(len(envs))))
    return [one(i) for i in range(len(envs))]


def env_state(env: Any) -> Any:
    """What a checkpoint needs to continue ``env`` exactly: its ``state_dict()`` when it has one,
    else a copy of its attributes (which must then be picklable)."""
    if hasattr(env, "state_dict"):
        return env.state_dict()
    return dict(vars(env))


def pop_env_metrics(envs: Iterable[Any]) -> dict[str, float]:
    """The sum over env copies of their ``pop_metrics()`` counters (envs without it add nothing)."""
    total: dict[str, float] = {}
    for env in envs:
        for key, value in (env.pop_metrics() if hasattr(env, "pop_metrics") else {}).items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def summarize_metrics(counters: Mapping[str, float]) -> dict[str, float]:
    """Env counters for a metrics row: each ``X.sum`` / ``X.n`` pair becomes the mean ``X``;
    other counters stay as they are."""
    out: dict[str, float] = {}
    for key, value in counters.items():
        if key.endswith(".sum") and key[:-4] + ".n" in counters:
            n = counters[key[:-4] + ".n"]
            out[key[:-4]] = value / n if n else float("nan")
        elif not (key.endswith(".n") and key[:-2] + ".sum" in counters):
            out[key] = value
    return out


def load_env_state(env: Any, state: Any) -> None:
    """Put back what :func:`env_state` returned."""
    if hasattr(env, "load_state_dict"):
        env.load_state_dict(state)
    else:
        vars(env).update(state)


def _resolve(name: str) -> type:
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"cannot import env module {module!r} ({e}); is it on PYTHONPATH?") from None
        try:
            return getattr(mod, attr)
        except AttributeError:
            raise AttributeError(f"module {module!r} has no env class {attr!r}") from None
    import marft.envs  # noqa: F401  (registers the built-in envs)

    return ENVS.get(name)


def env_config_class(name: str) -> type | None:
    """The ``Config`` dataclass of env ``name``, or None when it takes free keyword arguments."""
    return getattr(_resolve(name), "Config", None)


def make_env(name: str, kwargs: Mapping[str, Any] | None = None, team: Any = None) -> Env:
    """Build one env copy by registered name or ``module:Class``; kwargs are validated first.

    Args:
        name: registered name or ``module:Class``.
        kwargs: ``env.kwargs``.
        team: the team's :class:`~marft.team.TeamGraph`; envs with a ``bind_team`` method (those
            that grade some agents, say) receive it.
    """
    from marft.config import from_dict

    cls = _resolve(name)
    cfg_cls = getattr(cls, "Config", None)
    env = (
        cls(from_dict(cfg_cls, dict(kwargs or {}), "env.kwargs"))
        if cfg_cls is not None
        else cls(**dict(kwargs or {}))
    )
    if team is not None and hasattr(env, "bind_team"):
        env.bind_team(team)
    return env
