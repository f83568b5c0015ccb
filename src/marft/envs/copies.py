"""A run's env copies with what their class can do: stepping, saving, restoring and metering them
without asking each copy.

:func:`marft.compose.build_envs` builds an :class:`EnvCopies` (copies of one class and its
:class:`~marft.envs.capabilities.EnvCapabilities`); the collector and ``marft eval`` use its
methods. The free functions below do the same for any copies given their capabilities.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast, overload

from marft.config import ConfigError
from marft.envs.base import Env, Observation, StepResult
from marft.envs.capabilities import (
    AnswerMatchingEnv,
    BatchedEnv,
    EnvCapabilities,
    EvaluableEnv,
    MeteredEnv,
    StatefulEnv,
)

MAX_STEP_THREADS = 64
"""Most env copies stepped at once by :func:`step_all` (their own work bounds itself further)."""


def step_all(
    envs: Sequence[Env], actions: Sequence[Mapping[str, str]], caps: EnvCapabilities
) -> list[StepResult | Exception]:
    """Step each env copy on its joint action; an env's exception is returned, not raised.

    A :class:`~marft.envs.capabilities.BatchedEnv` class steps all copies in one call of its
    ``step_batch`` (a result or an exception per copy). Otherwise copies step one after another,
    or on threads when the class is a :class:`~marft.envs.capabilities.ConcurrentEnv` (the results
    keep the copies' order, and each copy is stepped by one thread).
    """

    def one(i: int) -> StepResult | Exception:
        try:
            return envs[i].step(actions[i])
        except Exception as e:  # noqa: BLE001 (a user env: the caller drops the episode, not the run)
            return e

    if caps.batched and envs:
        return list(cast(type[BatchedEnv], caps.cls).step_batch(envs, actions))
    if caps.concurrent and len(envs) > 1:
        with ThreadPoolExecutor(max_workers=min(len(envs), MAX_STEP_THREADS)) as pool:
            return list(pool.map(one, range(len(envs))))
    return [one(i) for i in range(len(envs))]


def env_state(env: Env, caps: EnvCapabilities) -> Any:
    """What a checkpoint needs to continue ``env`` exactly: its ``state_dict()`` when its class is a
    :class:`~marft.envs.capabilities.StatefulEnv`, else a copy of its attributes (which must then
    be picklable)."""
    if caps.stateful:
        return cast(StatefulEnv, env).state_dict()
    return dict(vars(env))


def load_env_state(env: Env, state: Any, caps: EnvCapabilities) -> None:
    """Put back what :func:`env_state` returned."""
    if caps.stateful:
        cast(StatefulEnv, env).load_state_dict(state)
    else:
        vars(env).update(state)


def pop_env_metrics(envs: Iterable[Env], caps: EnvCapabilities) -> dict[str, float]:
    """The sum over env copies of their ``pop_metrics()`` counters (none unless the class is a
    :class:`~marft.envs.capabilities.MeteredEnv`)."""
    total: dict[str, float] = {}
    if not caps.metered:
        return total
    for env in envs:
        for key, value in cast(MeteredEnv, env).pop_metrics().items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


class EnvCopies(Sequence[Env]):
    """The env copies of a run (copies of one class) and that class's capabilities.

    Indexing, ``len`` and iteration give the copies themselves.

    Args:
        envs: the copies.
        caps: what their class can do (:func:`marft.compose.env_capabilities`).
    """

    def __init__(self, envs: Sequence[Env], caps: EnvCapabilities) -> None:
        self._envs = list(envs)
        self.caps = caps

    @overload
    def __getitem__(self, i: int) -> Env: ...

    @overload
    def __getitem__(self, i: slice) -> list[Env]: ...

    def __getitem__(self, i: int | slice) -> Env | list[Env]:
        return self._envs[i]

    def __len__(self) -> int:
        return len(self._envs)

    def __iter__(self) -> Iterator[Env]:
        return iter(self._envs)

    def step(
        self, which: Sequence[int], actions: Sequence[Mapping[str, str]]
    ) -> list[StepResult | Exception]:
        """Step copies ``which`` on their joint actions (:func:`step_all`)."""
        return step_all([self._envs[b] for b in which], actions, self.caps)

    def states(self) -> list[Any]:
        """Every copy's :func:`env_state`, in order."""
        return [env_state(env, self.caps) for env in self._envs]

    def load_states(self, states: Sequence[Any]) -> None:
        """Put back what :meth:`states` returned."""
        for env, state in zip(self._envs, states, strict=True):
            load_env_state(env, state, self.caps)

    def pop_metrics(self) -> dict[str, float]:
        """The copies' counters since the last call, summed (:func:`pop_env_metrics`)."""
        return pop_env_metrics(self._envs, self.caps)

    def _evaluable(self) -> list[EvaluableEnv]:
        if not self.caps.evaluable:
            raise ConfigError(
                "env.name",
                f"env {self.caps.name!r} has no problem set (an EvaluableEnv has problems and "
                "reset_to(index)); marft eval needs one such as 'math'",
            )
        return cast(list[EvaluableEnv], self._envs)

    @property
    def problems(self) -> Sequence[Any]:
        """The problem list of an :class:`~marft.envs.capabilities.EvaluableEnv` class.

        Raises:
            ConfigError: the class has no problem set.
        """
        return self._evaluable()[0].problems

    def reset_to(self, b: int, index: int) -> Observation:
        """Start copy ``b`` on problem ``index`` (:class:`~marft.envs.capabilities.EvaluableEnv`).

        Raises:
            ConfigError: the class has no problem set.
        """
        return self._evaluable()[b].reset_to(index)

    def same_answer(self, a: str, b: str) -> bool:
        """Whether answers ``a`` and ``b`` are one: the class's ``same_answer``
        (:class:`~marft.envs.capabilities.AnswerMatchingEnv`), else string equality."""
        if self.caps.answer_matching:
            return cast(AnswerMatchingEnv, self._envs[0]).same_answer(a, b)
        return a == b
