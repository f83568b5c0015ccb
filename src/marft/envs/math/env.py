"""The math env: a team solves a problem; the graded agents' answers are checked by :func:`grade`.

Problems come from a Hugging Face dataset, ``data: hf:NAME[:CONFIG]`` (default GSM8K; the
datasets marft knows, GSM8K, MATH and MATH-500, arrive as ``{"problem", "answer"}`` rows, see
:mod:`marft.envs.hub`), or from a local JSONL file with one ``{"problem", "answer"}`` object per line
(keys configurable). Each reset draws a problem with
the seed it is given, so env copies reset with the same seed (a group) get the same problem.

Every agent sees the problem (``instruction``); only the graded agents are also told how to give
the answer (``answer_instruction``, their private text), so a planner told not to compute the
result is not asked to box one.

Multi-turn: after a wrong answer the env shows the attempt and the judge's feedback and the team
tries again, up to ``max_attempts``; a right answer ends the episode.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from marft.config import ConfigError
from marft.envs.base import ENVS, Observation, StepResult
from marft.envs.data import read_jsonl
from marft.envs.hub import load_hub_rows
from marft.envs.math.grading import Verdict, extract_answer, judge, normalize, warn_if_unreliable
from marft.envs.problems import ProblemEpisodes, missing_graded


@dataclass
class MathConfig:
    """Arguments of :class:`MathEnv` (``env.kwargs``)."""

    data: str = "hf:openai/gsm8k:main"
    """``hf:NAME[:CONFIG]`` for a Hugging Face dataset (GSM8K by default; MATH is
    ``hf:DigitalLearningGmbH/MATH-lighteval``), a local JSONL file, or ``arithmetic`` for generated
    one- and two-step word problems (see ``arith_*``)."""
    arith_count: int = 2000
    """``arithmetic``: how many problems."""
    arith_seed: int = 0
    """``arithmetic``: seed of the generator (use another seed for a held-out set)."""
    arith_max: int = 20
    """``arithmetic``: largest number in a problem."""
    split: str | None = None
    """Split of a Hugging Face dataset; null: the dataset's default (``train``; MATH-500:
    ``test``). Ignored for JSONL files."""
    data_files: list[str] = field(default_factory=list)
    """``data_files`` for ``hf:json`` / ``hf:csv``."""
    problem_key: str = "problem"
    """Field holding the problem text."""
    answer_key: str = "answer"
    """Field holding the reference answer."""
    answer_after: str | None = None
    """If set, the reference is the text after this marker (``"####"`` for raw GSM8K solutions)."""
    limit: int | None = None
    """Use only the first N problems."""
    instruction: str = "{problem}"
    """The shared observation, shown to every agent; ``{problem}`` is replaced by the problem."""
    answer_instruction: str = "Put your final answer within \\boxed{}."
    """How to give the answer, shown only to the graded agents (as their private text, after the
    shared observation and a blank line), so that an agent told not to compute the result is not
    asked for one; empty: none. Plain text (no ``{}`` fields). An ``instruction`` that still asks
    for the answer itself would ask the graded agents twice: set ``answer_instruction: ""`` then."""
    feedback: str = "Your team's answer {answer} is wrong. Check the work and try again."
    """Judge feedback after a wrong answer; ``{answer}`` is the extracted answer."""
    max_attempts: int = 1
    """Attempts per problem (each attempt is one team step)."""
    reward: Literal["final", "each"] = "final"
    """``final``: the team reward is 1 when the last graded agent is right; ``each``: every graded
    agent is rewarded for its own answer (use with ``env.reward_assignment: per_agent``)."""
    grader_warn_share: float = 0.02
    """Warn once when more than this share of grading calls gave no verdict (time-outs, worker
    failures), since those answers are scored as wrong."""

    def __post_init__(self) -> None:
        if self.data != "arithmetic" and not self.data.startswith("hf:") and not Path(self.data).is_file():
            raise ConfigError(
                "data",
                f"dataset file {self.data!r} not found; give a JSONL path or hf:NAME (working dir: "
                f"{Path.cwd()})",
            )
        if self.max_attempts < 1:
            raise ConfigError("max_attempts", "must be a positive integer")
        if not 0.0 <= self.grader_warn_share <= 1.0:
            raise ConfigError("grader_warn_share", "must be in [0, 1]")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit", "must be a positive integer or null")
        try:
            self.instruction.format(problem="p")
            self.feedback.format(answer="a")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                "instruction", f"only {{problem}} (and {{answer}} in feedback) may be used ({e})"
            ) from None
        if "{problem}" in self.answer_instruction or "{{" in self.answer_instruction:
            raise ConfigError(
                "answer_instruction",
                "is plain text, shown as written: no {problem} (use instruction) and single braces "
                "(\\boxed{})",
            )

    @staticmethod
    def check_team(cfg: MathConfig, team) -> tuple[str, str] | None:
        return missing_graded(team, "the agent that answers")


_NAMES = ["Tom", "Ana", "Lee", "Mia", "Sam", "Ivy", "Ben", "Zoe"]
_THINGS = ["apples", "books", "coins", "pencils", "stickers", "marbles", "cards", "shells"]


def arithmetic_problems(count: int, seed: int, max_value: int) -> tuple[tuple[str, str], ...]:
    """Generated one- and two-step word problems (+, -, x) with non-negative integer answers."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
        a, b, c = (rng.randint(1, max_value) for _ in range(3))
        kind = rng.randrange(5)
        if kind == 0:
            text, ans = (
                f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
                a + b,
            )
        elif kind == 1:
            a, b = max(a, b), min(a, b)
            text, ans = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?", a - b
        elif kind == 2:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            text, ans = (
                f"{name} has {a} bags with {b} {thing} in each bag. How many {thing} are there in total?",
                a * b,
            )
        elif kind == 3:
            text = (
                f"{name} has {a} {thing}, finds {b} more, and then finds {c} more. How many {thing} does "
                f"{name} have?"
            )
            ans = a + b + c
        else:
            a = a + b
            text = (
                f"{name} has {a} {thing}, gives away {b}, and then buys {c} more. How many {thing} does "
                f"{name} have?"
            )
            ans = a - b + c
        out.append((text, str(ans)))
    return tuple(out)


@lru_cache(maxsize=16)
def load_problems(
    data: str,
    split: str | None,
    data_files: tuple[str, ...],
    problem_key: str,
    answer_key: str,
    answer_after: str | None,
) -> tuple[tuple[str, str], ...]:
    """``(problem, reference)`` pairs of a dataset, loaded once per process.

    Raises:
        ConfigError: (key ``env.kwargs.data``) a missing or unreadable file, a line that is not a
            JSON object (with its number), a row without the configured fields, no rows, or a
            Hugging Face dataset that cannot be loaded (one line, with the local alternative).
    """
    hub = data.startswith("hf:")
    rows = (
        load_hub_rows(data, split, data_files, 'one {"problem": ..., "answer": ...} per line; docs/math.md')
        if hub
        else read_jsonl(data)
    )
    where = "row" if hub else "line"
    out = []
    for n, row in rows:
        if problem_key not in row or answer_key not in row:
            missing = [k for k in (problem_key, answer_key) if k not in row]
            raise ConfigError(
                "env.kwargs.data",
                f"{data} {where} {n} has no field {', '.join(map(repr, missing))} (its fields: "
                f"{', '.join(map(repr, row))}); set env.kwargs.problem_key / env.kwargs.answer_key",
            )
        answer = str(row[answer_key])
        if answer_after is not None:
            answer = answer.split(answer_after)[-1].strip().replace(",", "")
        out.append((str(row[problem_key]), answer))
    if not out:
        raise ConfigError("env.kwargs.data", f"{data} holds no problems")
    return tuple(out)


@ENVS.register("math")
class MathEnv(ProblemEpisodes):
    """Math problems for a team; graded agents come from the team config (``graded: true``)."""

    Config = MathConfig

    def __init__(self, config: MathConfig) -> None:
        super().__init__()
        self.cfg = config
        if config.data == "arithmetic":
            problems = arithmetic_problems(config.arith_count, config.arith_seed, config.arith_max)
        else:
            problems = load_problems(
                config.data,
                config.split,
                tuple(config.data_files),
                config.problem_key,
                config.answer_key,
                config.answer_after,
            )
        self.problems = problems[: config.limit] if config.limit else problems
        self._grader = {"grader_calls": 0, "grader_timeouts": 0, "grader_failures": 0}

    def pop_metrics(self) -> dict[str, float]:
        """Grading calls of this copy since the last call, and those without a verdict."""
        out = {k: float(v) for k, v in self._grader.items()}
        self._grader = dict.fromkeys(self._grader, 0)
        return out

    def _grade(self, response: str, reference: str) -> bool:
        verdict = judge(response, reference)
        self._grader["grader_calls"] += 1
        self._grader["grader_timeouts"] += verdict is Verdict.TIMEOUT
        self._grader["grader_failures"] += verdict is Verdict.FAILURE
        return verdict is Verdict.CORRECT

    def vocabulary(self) -> list[str]:
        """Every problem and answer (the built-in tiny tokenizer is trained to cover them)."""
        return [f"{p} {a}" for p, a in self.problems] + [
            self.cfg.instruction,
            self.cfg.answer_instruction,
            self.cfg.feedback,
        ]

    @property
    def problem(self) -> str:
        return self.problems[self.index][0]

    @property
    def reference(self) -> str:
        return self.problems[self.index][1]

    def task_observation(self, task: str) -> Observation:
        """A user's problem, shown as the env shows its own (the answer instruction to the
        graded agents)."""
        return self._render(task, [])

    def _observe(self) -> Observation:
        return self._render(self.problem, self.history)

    def _render(self, problem: str, history: list[str]) -> Observation:
        text = self.cfg.instruction.format(problem=problem)
        if history:
            text = text + "\n\n" + "\n".join(history)
        # Private text follows the shared text after one "\n" (build_messages): the leading "\n"
        # makes the blank line that separated the two when the answer instruction was shared.
        answer = self.cfg.answer_instruction
        private = {role: "\n" + answer for role in self.graded_roles} if answer else {}
        return Observation(text=text, private=private)

    def step(self, actions: Mapping[str, str]) -> StepResult:
        if not self.graded_roles:
            raise RuntimeError(
                "MathEnv.bind_team was not called: the env does not know which agents are graded"
            )
        # Graded agents that acted (a routing team may skip some), in the order they last acted.
        graded = [role for role in actions if role in self.graded_roles]
        correct = {role: self._grade(actions[role], self.reference) for role in graded}
        warn_if_unreliable(self.cfg.grader_warn_share)
        final = graded[-1] if graded else None
        solved = correct[final] if final is not None else False
        self.attempt += 1
        done = solved or self.attempt >= self.cfg.max_attempts
        info = {
            "problem_index": self.index,
            "reference": self.reference,
            "correct": correct,
            "attempt": self.attempt,
        }
        if not done:
            shown = (extract_answer(actions[final]) if final is not None else None) or "(none)"
            self.history.append(self.cfg.feedback.format(answer=shown))
        rewards: float | dict[str, float]
        if self.cfg.reward == "each":
            rewards = {role: float(ok) for role, ok in correct.items()}
        else:
            rewards = float(solved)
        answer = extract_answer(actions[final]) if final is not None else None
        return StepResult(
            observation=self._observe(), rewards=rewards, done=done, info=info, correct=solved, answer=answer
        )

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers are mathematically equal (``5`` and ``5.0``): majority
        votes count them as one."""
        a, b = normalize(a), normalize(b)
        return a == b or self._grade("\\boxed{" + a + "}", b)
