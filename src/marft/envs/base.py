"""The environment protocol.

An environment is any object with

* ``reset(seed) -> Observation``
* ``step(actions) -> StepResult`` where ``actions`` maps each role to its decoded text.

What an env may do beyond that is a named protocol each (:mod:`marft.envs.capabilities`):
:class:`~marft.envs.capabilities.StatefulEnv` (``state_dict`` / ``load_state_dict``: exact resume;
without it, checkpoints pickle the env's attributes), :class:`~marft.envs.capabilities.MeteredEnv`
(``pop_metrics``: counters summed over env copies into each iteration's metrics row, e.g. the math
env's ``grader_timeouts``; a pair ``X.sum`` / ``X.n`` becomes the mean ``X``:
:func:`summarize_metrics`), :class:`~marft.envs.capabilities.BatchedEnv` (a classmethod
``step_batch(envs, actions)`` that steps many copies at once, such as a judge model's forward),
:class:`~marft.envs.capabilities.ConcurrentEnv` (``concurrent_steps = True``: copies step on
threads), :class:`~marft.envs.capabilities.TeamAwareEnv` (``bind_team``),
:class:`~marft.envs.capabilities.JudgeableEnv` (``bind_judge``),
:class:`~marft.envs.capabilities.EvaluableEnv` (``problems``, ``reset_to``: ``marft eval``),
:class:`~marft.envs.capabilities.AnswerMatchingEnv` (``same_answer``) and
:class:`~marft.envs.capabilities.VocabularyEnv` (``vocabulary``). :mod:`marft.compose` decides
once per run which of them an env class keeps (:func:`marft.compose.env_capabilities`), and the
run's copies travel with that answer (:class:`~marft.envs.copies.EnvCopies`).

Envs are found by registered name (``env.name: signal``) or by ``package.module:Class``
(:func:`env_class`). An env class may carry a ``Config`` dataclass
(:class:`~marft.envs.capabilities.ConfiguredEnv`): its ``env.kwargs`` are then validated against
it before any model loads, and the instance is built as ``Class(config)``; otherwise as
``Class(**kwargs)`` (:func:`marft.compose.make_env`).

Example:
    >>> from marft.compose import make_env
    >>> env = make_env("signal", {"symbols": ["red", "blue"]})
    >>> obs = env.reset(seed=0)
    >>> result = env.step({"speaker": "x", "listener": "red"})
    >>> result.done
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
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
"""Registered env classes (``env.name``); the built-in ones register when :mod:`marft.envs` is imported."""


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


def env_class(name: str) -> type:
    """The env class of ``env.name``: a registered name or ``package.module:Class``.

    Raises:
        ImportError: the module cannot be imported.
        AttributeError: the module has no such class.
        KeyError: no env is registered under ``name`` (the message lists those that are).
    """
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
