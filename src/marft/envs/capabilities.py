"""What an env may do beyond ``reset`` and ``step``: one named protocol per optional capability.

An env class keeps a capability by defining all of its protocol's methods; :func:`marft.compose.
env_capabilities` decides once per run which ones an env class keeps (a class with some but not
all of a protocol's methods is a config error naming the missing one) and records the answer in an
:class:`EnvCapabilities`. Everything after that (the collector's env copies, evaluation, judge
binding, the tiny tokenizer's corpus) reads the record instead of asking each env copy.

* :class:`StatefulEnv`: ``state_dict()``, ``load_state_dict(state)``; checkpoints (exact resume).
* :class:`MeteredEnv`: ``pop_metrics()``; counters for each iteration's metrics row.
* :class:`BatchedEnv`: classmethod ``step_batch(envs, actions)``; all copies step in one call.
* :class:`ConcurrentEnv`: class attribute ``concurrent_steps = True``; copies step on threads.
* :class:`TeamAwareEnv`: ``bind_team(graph)``; called once when a copy is built.
* :class:`JudgeableEnv`: ``bind_judge(judge, heldout, owner)``; judge models (``reward.judge``).
* :class:`EvaluableEnv`: ``problems``, ``reset_to(index)``; ``marft eval`` walks the problems.
* :class:`AnswerMatchingEnv`: ``same_answer(a, b)``; ``marft eval``'s majority vote.
* :class:`VocabularyEnv`: ``vocabulary()``; words the built-in tiny tokenizer must know.
* :class:`TaskEnv`: ``task_observation(task)``; a user's task as the env would show it
  (``marft run``, ``marft serve``).
* :class:`ConfiguredEnv`: class attribute ``Config`` (a dataclass); ``env.kwargs`` checked against it.
* :class:`TeamCheckedConfig`: ``Config.check_team(config, team)``; config validation.
* :class:`RewardCheckedConfig`: ``Config.check_reward(config, reward)``; config validation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from marft.envs.base import Observation, StepResult

TeamCheck = Callable[[Any, Any], "tuple[str, str] | None"]
"""``check_team(env config, team config) -> (key, problem) | None``."""
RewardCheck = Callable[[Any, Any], "tuple[str, str] | None"]
"""``check_reward(env config, reward config) -> (key, problem) | None``."""


class StatefulEnv(Protocol):
    """An env that saves and restores itself for exact resume (without it, a checkpoint pickles a
    copy of the env's attributes, which must then be picklable)."""

    def state_dict(self) -> dict[str, Any]:
        """What continuing the env exactly needs (not what reloads from its config)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned."""
        ...


class MeteredEnv(Protocol):
    """An env that counts things worth logging (the math env's ``grader_timeouts``, say)."""

    def pop_metrics(self) -> dict[str, float]:
        """Counters since the last call, summed over env copies into each iteration's metrics row;
        a pair ``X.sum`` / ``X.n`` becomes the mean ``X`` (:func:`marft.envs.base.summarize_metrics`)."""
        ...


class BatchedEnv(Protocol):
    """An env whose copies step together in one call (work batched across copies, such as a judge
    model's forward)."""

    @classmethod
    def step_batch(
        cls, envs: Sequence[Any], actions: Sequence[Mapping[str, str]]
    ) -> list[StepResult | Exception]:
        """Step every copy on its joint action: a result, or the exception of that copy, per copy."""
        ...


class ConcurrentEnv(Protocol):
    """An env whose copies may step at once, on threads (a step that waits on other processes,
    such as the code env's sandbox). Each copy is stepped by one thread; results keep the order."""

    concurrent_steps: ClassVar[bool]
    """True to step copies on threads."""


class TeamAwareEnv(Protocol):
    """An env that must know the team (which roles it grades, say)."""

    def bind_team(self, graph: Any) -> None:
        """Receive the team's :class:`~marft.team.TeamGraph` (once, right after construction)."""
        ...


class JudgeableEnv(Protocol):
    """An env scored by a judge model (``reward.judge``; the ``judged`` env)."""

    def bind_judge(self, judge: Any, heldout: Any = None, owner: bool = True) -> None:
        """Use ``judge`` for the reward and ``heldout`` (if any) for the reward guard; every copy
        shares them and the ``owner`` copy keeps their state in its :meth:`StatefulEnv.state_dict`."""
        ...


class EvaluableEnv(Protocol):
    """An env over a problem list that ``marft eval`` can walk (it also needs
    ``StepResult.correct``)."""

    problems: Sequence[Any]
    """The problems, in a fixed order (an attribute set by the constructor is fine)."""

    def reset_to(self, index: int) -> Observation:
        """Start an episode on problem ``index``."""
        ...


class AnswerMatchingEnv(Protocol):
    """An env that knows when two answers are one (``5`` and ``5.0``): ``marft eval``'s majority
    vote counts them as one (without it, equal strings)."""

    def same_answer(self, a: str, b: str) -> bool: ...


class VocabularyEnv(Protocol):
    """An env whose words the built-in tiny tokenizer must know."""

    def vocabulary(self) -> list[str]: ...


class TaskEnv(Protocol):
    """An env that can show the team a task a user typed (``marft run``, ``marft serve``) the way
    it shows its own problems: its instruction around the text, private text to the right roles.
    Without it, the task's text is the observation, shown to every agent."""

    def task_observation(self, task: str) -> Observation:
        """The first observation of ``task`` (there is no answer key: nothing is graded)."""
        ...


class ConfiguredEnv(Protocol):
    """An env class built as ``Class(config)`` from a ``Config`` dataclass that ``env.kwargs`` are
    checked against before any model loads (without it: ``Class(**kwargs)``)."""

    Config: ClassVar[type]


class TeamCheckedConfig(Protocol):
    """An env ``Config`` that checks the team it is given (a graded agent, say)."""

    @staticmethod
    def check_team(config: Any, team: Any) -> tuple[str, str] | None:
        """``(key, problem)`` when ``team`` (a :class:`~marft.config.TeamConfig`) does not fit."""
        ...


class RewardCheckedConfig(Protocol):
    """An env ``Config`` that checks the ``reward`` section (envs scored by a judge model)."""

    @staticmethod
    def check_reward(config: Any, reward: Any) -> tuple[str, str] | None:
        """``(key, problem)`` when ``reward`` (a :class:`~marft.config.RewardConfig`) does not fit."""
        ...


@dataclass(frozen=True)
class EnvCapabilities:
    """Which optional protocols an env class keeps, decided once per run by
    :func:`marft.compose.env_capabilities` (see the module docstring).

    Attributes:
        cls: the env class.
        name: ``env.name`` as configured (for messages).
        config_class: its ``Config`` dataclass (:class:`ConfiguredEnv`), or None.
        team_check: ``Config.check_team`` (:class:`TeamCheckedConfig`), or None.
        reward_check: ``Config.check_reward`` (:class:`RewardCheckedConfig`), or None.
    """

    cls: type
    name: str
    config_class: type | None = None
    stateful: bool = False
    metered: bool = False
    batched: bool = False
    concurrent: bool = False
    team_aware: bool = False
    judgeable: bool = False
    evaluable: bool = False
    answer_matching: bool = False
    vocabulary: bool = False
    tasks: bool = False
    team_check: TeamCheck | None = None
    reward_check: RewardCheck | None = None
