"""The code env: a team writes a Python function; the sandbox runs it against the task's tests.

``env.name: code``. The graded agent (the coder; the last one with ``graded: true``) is the one
whose answer is run: :func:`~marft.envs.code.extract.extract_code` takes its last complete
definition of the wanted function, and :class:`~marft.envs.code.sandbox.Sandbox` runs it with the
task's tests. Reward: the fraction of tests passed (``reward: fraction``) or 1 only when all pass
(``reward: all``); ``correct`` (what ``marft eval``'s pass@k counts) means all passed.

Multi-turn (``max_attempts`` > 1): after a failure the next observation holds the attempt's code
and a short, bounded summary of what failed (the failing visible tests with what the function
returned, the number of other failing tests, a time-out, a crash). With ``tester_role``, that
agent's ``assert`` lines run too, after the task's tests (they never count towards the reward),
and their results join the feedback: the coder sees them on the next attempt.

Env copies step concurrently (``concurrent_steps``): the collector runs their ``step`` on threads,
and the shared sandbox runs at most one program per core at once.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from marft.config import ConfigError
from marft.envs.base import ENVS, Observation, StepResult
from marft.envs.code.extract import extract_code
from marft.envs.code.sandbox import ExecResult, Limits, Sandbox, Status
from marft.envs.code.tasks import CodeTask, easy_tasks, task_from_row
from marft.envs.data import read_jsonl
from marft.envs.hub import load_hub_rows
from marft.envs.problems import ProblemEpisodes, missing_graded


@dataclass(frozen=True)
class SandboxConfig(Limits):
    """The sandbox of the code env (``env.kwargs.sandbox``): the :class:`Limits` and these."""

    isolation: Literal["auto", "bwrap", "unshare", "none"] = "auto"
    """``auto``: bubblewrap, else ``unshare``, else limits alone (each weaker one warns)."""
    workers: int = 0
    """Programs run at once in this process; 0: one per CPU core."""
    python: str = "auto"
    """Interpreter of the programs; ``auto``: the trainer's, else the system's ``python3``."""


@dataclass
class CodeConfig:
    """Arguments of :class:`CodeEnv` (``env.kwargs``)."""

    data: str = "hf:google-research-datasets/mbpp:full"
    """``hf:NAME[:CONFIG]`` for a Hugging Face dataset (MBPP by default; ``...mbpp:sanitized``,
    HumanEval is ``hf:openai/openai_humaneval``), a local JSONL file of MBPP- or HumanEval-style
    rows, or ``easy`` for generated one-line function tasks (see ``easy_*``)."""
    easy_count: int = 2000
    """``easy``: how many tasks."""
    easy_seed: int = 0
    """``easy``: seed of the generator."""
    easy_split: Literal["train", "test"] = "train"
    """``easy``: ``test`` draws the constants of the tasks from another set (a held-out set)."""
    split: str | None = None
    """Split of a Hugging Face dataset; null: the dataset's default (``train``; HumanEval:
    ``test``)."""
    data_files: list[str] = field(default_factory=list)
    """``data_files`` for ``hf:json``."""
    limit: int | None = None
    """Use only the first N tasks."""
    challenge_tests: bool = False
    """MBPP: run its ``challenge_tests`` too (never shown)."""
    visible_tests: Literal["none", "one", "all"] = "all"
    """How many of the task's visible tests the prompt shows (MBPP's convention: all)."""
    instruction: str = (
        "{problem}\n{tests}\nWrite the Python function `{entry_point}` in one ```python code block."
    )
    """The shared observation: ``{problem}``, ``{tests}`` (the shown tests, or nothing) and
    ``{entry_point}`` are filled in."""
    tests_header: str = "Your code should pass these tests:\n"
    """Put before the shown tests."""
    reward: Literal["fraction", "all"] = "fraction"
    """``fraction``: share of the tests passed; ``all``: 1 when every test passes, else 0."""
    max_attempts: int = 1
    """Attempts per task (each one team step); a right program ends the episode."""
    feedback_chars: int = 600
    """Longest feedback after a failed attempt (characters)."""
    code_chars: int = 1500
    """Longest previous attempt shown again (characters)."""
    tester_role: str | None = None
    """A role whose ``assert`` lines run against the coder's program, for feedback only."""
    tester_asserts: int = 5
    """Most of the tester's asserts run per attempt."""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    def __post_init__(self) -> None:
        if self.data != "easy" and not self.data.startswith("hf:") and not Path(self.data).is_file():
            raise ConfigError(
                "data",
                f"dataset file {self.data!r} not found; give a JSONL path, hf:NAME or easy (working dir: "
                f"{Path.cwd()})",
            )
        for name in ("max_attempts", "feedback_chars", "code_chars", "tester_asserts", "easy_count"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be a positive integer")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit", "must be a positive integer or null")
        try:
            self.instruction.format(problem="p", tests="t", entry_point="f")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                "instruction", f"only {{problem}}, {{tests}} and {{entry_point}} may be used ({e})"
            ) from None

    @staticmethod
    def check_team(cfg: CodeConfig, team) -> tuple[str, str] | None:
        roles = [a.role for a in team.agents]
        if (problem := missing_graded(team, "the coder")) is not None:
            return problem
        if cfg.tester_role is not None and cfg.tester_role not in roles:
            return (
                "env.kwargs.tester_role",
                f"{cfg.tester_role!r} is not a role of the team ({', '.join(roles)})",
            )
        return None


@lru_cache(maxsize=16)
def load_tasks(
    data: str, split: str | None, data_files: tuple[str, ...], challenge: bool
) -> tuple[CodeTask, ...]:
    """The tasks of a JSONL file or Hugging Face dataset, loaded once per process."""
    if data.startswith("hf:"):
        rows = load_hub_rows(data, split, data_files, "one MBPP or HumanEval row per line; docs/code.md")
    else:
        rows = read_jsonl(data)
    tasks = tuple(task_from_row(row, f"{data} row {n}", challenge) for n, row in rows)
    if not tasks:
        raise ConfigError("env.kwargs.data", f"{data} holds no tasks")
    return tasks


@lru_cache(maxsize=4)
def shared_sandbox(config: SandboxConfig) -> Sandbox:
    """One sandbox per process and configuration, shared by all env copies (its slots bound the
    programs running at once)."""
    limits = Limits(**{k: v for k, v in asdict(config).items() if k in Limits.__dataclass_fields__})
    return Sandbox(limits, isolation=config.isolation, workers=config.workers, python=config.python)


_COUNTERS = ("runs", "no_code", *(f"{s.value}" for s in Status))


def assert_lines(text: str, limit: int) -> list[str]:
    """The first ``limit`` lines of ``text`` that are complete ``assert`` statements."""
    out = []
    for line in text.splitlines():
        line = line.strip().strip("`")
        if line.startswith("assert ") and _is_assert(line):
            out.append(line)
            if len(out) == limit:
                break
    return out


def _is_assert(line: str) -> bool:
    try:
        body = ast.parse(line).body
    except SyntaxError:
        return False
    return len(body) == 1 and isinstance(body[0], ast.Assert)


@ENVS.register("code")
class CodeEnv(ProblemEpisodes):
    """Programming tasks for a team; the graded agent's code runs in the sandbox."""

    Config = CodeConfig
    concurrent_steps = True

    def __init__(self, config: CodeConfig) -> None:
        super().__init__()
        self.cfg = config
        if config.data == "easy":
            tasks = easy_tasks(config.easy_count, config.easy_seed, config.easy_split)
        else:
            tasks = load_tasks(config.data, config.split, tuple(config.data_files), config.challenge_tests)
        self.problems = tasks[: config.limit] if config.limit else tasks
        self.sandbox = shared_sandbox(config.sandbox)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._seconds = 0.0

    def pop_metrics(self) -> dict[str, float]:
        """Sandbox runs of this copy since the last call, by verdict, and their seconds."""
        out = {f"sandbox_{k}": float(v) for k, v in self._counts.items()}
        out["sandbox_seconds"] = self._seconds
        self._counts, self._seconds = dict.fromkeys(_COUNTERS, 0), 0.0
        return out

    def vocabulary(self) -> list[str]:
        """Every task's text, tests and solution (the built-in tiny tokenizer covers them)."""
        return [f"{t.problem} {' '.join(t.tests)} {t.solution}" for t in self.problems] + [
            self.cfg.instruction
        ]

    @property
    def task(self) -> CodeTask:
        return self.problems[self.index]

    def _shown(self) -> tuple[int, ...]:
        """Indices of the tests the prompt shows (and feedback may quote)."""
        n = {"none": 0, "one": 1, "all": len(self.task.visible)}[self.cfg.visible_tests]
        return self.task.visible[:n]

    def _shown_tests(self) -> str:
        lines = [self.task.tests[i] for i in self._shown()]
        return self.cfg.tests_header + "\n".join(lines) + "\n" if lines else ""

    def task_observation(self, task: str) -> Observation:
        """A user's task in the env's instruction, with no tests shown; the function's name is the
        first ``def NAME`` or backquoted name in the text (else ``solution``)."""
        found = re.search(r"\bdef\s+(\w+)|`(\w+)`", task)
        name = (found.group(1) or found.group(2)) if found else "solution"
        return Observation(text=self.cfg.instruction.format(problem=task, tests="", entry_point=name))

    def _observe(self) -> Observation:
        task = self.task
        text = self.cfg.instruction.format(
            problem=task.problem, tests=self._shown_tests(), entry_point=task.entry_point
        )
        if self.history:
            text = text + "\n\n" + "\n\n".join(self.history)
        return Observation(text=text)

    def run_code(self, code: str | None, extra: list[str]) -> ExecResult | None:
        """Run ``code`` on the task's tests, then ``extra`` asserts (None when there is no code)."""
        if code is None:
            self._counts["no_code"] += 1
            return None
        task = self.task
        result = self.sandbox.run(task.job(code, tuple(extra)))
        self._counts["runs"] += 1
        self._counts[result.status.value] += 1
        self._seconds += result.seconds
        return result

    def step(self, actions: Mapping[str, str]) -> StepResult:
        if not self.graded_roles:
            raise RuntimeError("CodeEnv.bind_team was not called: the env does not know which agent codes")
        task, n = self.task, len(self.task.tests)
        # The graded agent that acted last (a routing team may skip one): no program when none did.
        coder = next((r for r in reversed(list(actions)) if r in self.graded_roles), None)
        code = extract_code(actions[coder], task.entry_point) if coder is not None else None
        extra = (
            assert_lines(actions.get(self.cfg.tester_role, ""), self.cfg.tester_asserts)
            if self.cfg.tester_role
            else []
        )
        result = self.run_code(code, extra)
        passed = result.failures.count("") if result is not None else 0
        solved = passed == n
        self.attempt += 1
        done = solved or self.attempt >= self.cfg.max_attempts
        if not done:
            self.history = [self._feedback(code, result, extra)]
        reward = passed / n if self.cfg.reward == "fraction" else float(solved)
        info = {
            "problem_index": self.index,
            "task_id": task.id,
            "attempt": self.attempt,
            # the task's verdict: the tester's asserts may fail (or hang) after every test passed
            "status": "passed" if solved else result.status.value if result is not None else "no_code",
            "tests_passed": passed,
            "tests": n,
        }
        return StepResult(observation=self._observe(), rewards=reward, done=done, info=info, correct=solved)

    def _feedback(self, code: str | None, result: ExecResult | None, extra: list[str]) -> str:
        """What the team sees after a failed attempt: its code (at most ``code_chars``) and why it
        failed (at most ``feedback_chars``)."""
        name = self.task.entry_point
        if code is None or result is None:
            return (
                f"Your team's answer had no complete Python function `{name}`. Write it in one ```python "
                "block."
            )
        n = len(self.task.tests)
        if result.status is Status.FAILED:
            lines = [f"It failed: {result.failures.count('')} of {n} tests passed."]
        else:
            lines = [f"It failed: {result.detail}."]
        shown = set(self._shown())
        hidden = 0
        for i, failure in enumerate(result.failures):
            if failure and i in shown:
                lines.append(f"`{self.task.tests[i]}` -> {failure}")
            hidden += bool(failure) and i not in shown
        if hidden:
            lines.append(f"{hidden} hidden test(s) failed.")
        for test, failure in zip(extra, result.team_failures, strict=False):
            lines.append(f"Tester's check `{test}`: {failure or 'passed'}")
        summary = "\n".join(lines)
        if len(summary) > self.cfg.feedback_chars:
            summary = summary[: self.cfg.feedback_chars - 4] + " ..."
        return f"Your team's previous code:\n```python\n{code[: self.cfg.code_chars]}\n```\n{summary}"
