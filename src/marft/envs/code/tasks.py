"""Programming tasks: MBPP and HumanEval rows, and a generated set of easy function-writing tasks.

A :class:`CodeTask` is what the code env needs from any source: the text to show, the function
the program must define, the tests to run (each a statement; a test passes when it raises
nothing) and which of them may be shown.

* **MBPP** rows (``{"problem", "tests", "setup", "challenge_tests"}``): the wanted function is the
  one the first test calls; every test may be shown (MBPP's prompts show them).
* **HumanEval** rows (``{"prompt", "entry_point", "test"}``): the prompt (the signature and the
  docstring) is shown and prepended to the program, so its imports and helpers exist. The tests
  are ``check(candidate)``'s asserts, one test each, so that a reward can be a fraction; the 7 of
  164 whose ``check`` holds more than asserts run as one test. None is shown (the docstring's
  examples are the visible tests). The prompt and the test code also run in the sandbox's checker
  (``checker``), so a helper the tests use (``encode_cyclic``, ``poly``) is the task's own, not one
  the program redefined.
* **easy** (:func:`easy_tasks`): seeded one-line functions ("return the sum of the even numbers in
  xs") with generated tests, so that a tiny model on a CPU can show learning.
"""

from __future__ import annotations

import ast
import builtins
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from marft.config import ConfigError
from marft.envs.code.sandbox import Job
from marft.envs.hub import humaneval_row, mbpp_row


@dataclass(frozen=True)
class CodeTask:
    """One programming problem.

    Attributes:
        id: the dataset's id (``mbpp/601``, ``HumanEval/0``, ``easy/12``).
        problem: the text shown to the team.
        entry_point: the function the program must define.
        tests: statements run after the program; each passes when it raises nothing.
        visible: indices of the tests that may be shown in the prompt and in feedback.
        setup: code run in the program's process after the program, before the tests (it may
            build inputs with the program's classes; the program can read it).
        preamble: code put before the model's program (HumanEval's prompt: imports, helpers).
        checker: code the sandbox's checker runs before the tests (HumanEval's prompt and ``check``):
            definitions the tests use, out of the program's reach.
        solution: a reference solution, when the dataset has one.
    """

    id: str
    problem: str
    entry_point: str
    tests: tuple[str, ...]
    visible: tuple[int, ...] = ()
    setup: str = ""
    preamble: str = ""
    checker: str = ""
    solution: str = ""

    def job(self, code: str, team_tests: tuple[str, ...] = ()) -> Job:
        """The sandbox job that runs ``code`` (a program for this task) on its tests."""
        return Job(
            self.preamble + "\n\n" + code if self.preamble else code,
            self.tests,
            setup=self.setup,
            entry_point=self.entry_point,
            checker=self.checker,
            team_tests=team_tests,
        )


def called_function(tests: list[str], solution: str = "") -> str | None:
    """The function MBPP's tests want: the first one they call that is not a builtin, else (a task
    may shadow one: mbpp/126 defines ``sum``) the first they call that the solution defines."""
    calls: list[str] = []
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError:
            continue
        calls += [
            n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        ]
    for name in calls:
        if not hasattr(builtins, name):
            return name
    try:
        defined = {n.name for n in ast.parse(solution).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    except SyntaxError:
        defined = set()
    return next((name for name in calls if name in defined), None)


def mbpp_task(row: Mapping[str, Any], where: str, challenge: bool = False) -> CodeTask:
    """A task from an MBPP-style row (``problem``, ``tests``; optional ``setup``, ``challenge_tests``)."""
    tests = [str(t) for t in row["tests"]] + (
        [str(t) for t in row.get("challenge_tests") or []] if challenge else []
    )
    name = called_function(tests, str(row.get("solution") or ""))
    if name is None:
        raise ConfigError(
            "env.kwargs.data", f"{where}: its tests call no function, so the wanted name is unknown"
        )
    return CodeTask(
        id=str(row.get("id", where)),
        problem=str(row["problem"]),
        entry_point=name,
        tests=tuple(tests),
        visible=tuple(range(len(row["tests"]))),
        setup=str(row.get("setup") or ""),
        solution=str(row.get("solution") or ""),
    )


def _check_asserts(test: str) -> list[str] | None:
    """The asserts of ``check(candidate)``, each as source, or None when it holds anything else."""
    tree = ast.parse(test)
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        return None
    body = [n for n in checks[0].body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    if not body or not all(isinstance(n, ast.Assert) for n in body):
        return None
    return [ast.get_source_segment(test, n) or ast.unparse(n) for n in body]


def humaneval_task(row: Mapping[str, Any], where: str) -> CodeTask:
    """A task from a HumanEval-style row (``prompt``, ``entry_point``, ``test``)."""
    prompt, entry, test = str(row["prompt"]), str(row["entry_point"]), str(row["test"])
    asserts = _check_asserts(test)
    return CodeTask(
        id=str(row.get("id", where)),
        problem=f"Complete this Python function:\n```python\n{prompt.rstrip()}\n```",
        entry_point=entry,
        tests=tuple(asserts) if asserts else ("check(candidate)",),
        preamble=prompt,
        checker=f"{prompt}\n{test}",
        solution=str(row.get("solution") or ""),
    )


def task_from_row(row: Mapping[str, Any], where: str, challenge: bool = False) -> CodeTask:
    """An MBPP- or HumanEval-style row (marft's field names, or the Hugging Face datasets' own as
    :mod:`marft.envs.hub` reads them), told apart by its fields."""
    if {"task_id", "test_list"} <= row.keys():
        row = mbpp_row(row)
    elif {"task_id", "canonical_solution"} <= row.keys():
        row = humaneval_row(row)
    if {"prompt", "entry_point", "test"} <= row.keys():
        return humaneval_task(row, where)
    if {"problem", "tests"} <= row.keys():
        return mbpp_task(row, where, challenge)
    raise ConfigError(
        "env.kwargs.data",
        f"{where} has neither MBPP fields (problem, tests) nor HumanEval fields (prompt, entry_point, "
        f"test); its fields: {', '.join(map(repr, row))}",
    )


# The generated set: (name, text, signature arguments, reference, input maker). ``k`` is a
# per-task constant, so tasks of one template differ.
_Template = tuple[str, str, str, Callable[..., Any], Callable[[random.Random], tuple]]


def _ints(rng: random.Random) -> tuple:
    return ([rng.randint(-9, 20) for _ in range(rng.randint(2, 7))],)


def _word(rng: random.Random) -> tuple:
    return ("".join(rng.choice("abcdeilmnorstu") for _ in range(rng.randint(3, 8))),)


def _two(rng: random.Random) -> tuple:
    return (rng.randint(-20, 20), rng.randint(-20, 20))


_TEMPLATES: list[_Template] = [
    ("sum_even", "returns the sum of the even numbers in the list xs", "xs",
     lambda k, xs: sum(x for x in xs if x % 2 == 0), _ints),
    ("count_above", "returns how many numbers in the list xs are greater than {k}", "xs",
     lambda k, xs: sum(x > k for x in xs), _ints),
    ("add_k", "returns a new list with {k} added to every number in the list xs", "xs",
     lambda k, xs: [x + k for x in xs], _ints),
    ("times_k", "returns a new list with every number in the list xs multiplied by {k}", "xs",
     lambda k, xs: [x * k for x in xs], _ints),
    ("largest", "returns the largest number in the list xs", "xs", lambda k, xs: max(xs), _ints),
    ("smallest", "returns the smallest number in the list xs", "xs", lambda k, xs: min(xs), _ints),
    ("keep_above", "returns the numbers in the list xs that are greater than {k}, in order", "xs",
     lambda k, xs: [x for x in xs if x > k], _ints),
    ("reverse_text", "returns the string s reversed", "s", lambda k, s: s[::-1], _word),
    ("count_vowels", "returns the number of vowels (a, e, i, o, u) in the string s", "s",
     lambda k, s: sum(c in "aeiou" for c in s), _word),
    ("repeat_text", "returns the string s repeated {k} times", "s", lambda k, s: s * k, _word),
    ("add_then_k", "returns a + b + {k}", "a, b", lambda k, a, b: a + b + k, _two),
    ("larger", "returns the larger of the two numbers a and b", "a, b", lambda k, a, b: max(a, b), _two),
    ("count_k", "returns how many times the number {k} appears in the list xs", "xs",
     lambda k, xs: xs.count(k), _ints),
    ("without_k", "returns the list xs without any number equal to {k}", "xs",
     lambda k, xs: [x for x in xs if x != k], _ints),
    ("first_k", "returns the first {k} elements of the list xs", "xs", lambda k, xs: xs[:k], _ints),
    ("divisible", "returns True if n is divisible by {k}, else False", "n",
     lambda k, n: n % k == 0, lambda r: (r.randint(0, 60),)),
    ("shout", "returns the string s in upper case", "s", lambda k, s: s.upper(), _word),
]  # fmt: skip


_TRIES = 20


def easy_tasks(count: int, seed: int, split: str = "train", n_tests: int = 3) -> tuple[CodeTask, ...]:
    """``count`` generated function-writing tasks (seeded), each with ``n_tests`` generated tests
    of which the first is visible; the reference solution is a one-line function.

    The constant ``k`` in a task ("add {k} to every number") is even in the ``train`` split and odd
    in ``test``, so a held-out task with a constant never asks for a function seen in training;
    the templates without a constant appear in both, with other test inputs.
    """
    if split not in ("train", "test"):
        raise ConfigError("easy_split", f"must be train or test, got {split!r}")
    rng = random.Random(seed)
    out = []
    for i in range(count):
        name, text, args, ref, make = rng.choice(_TEMPLATES)
        k = rng.randrange(2, 20, 2) + (split == "test")
        tests: list[str] = []
        for _ in range(_TRIES):  # tests whose answers all agree would let a constant pass
            cases = [make(rng) for _ in range(n_tests)]
            answers = [ref(k, *inputs) for inputs in cases]
            if len({repr(a) for a in answers}) > 1:
                break
        for inputs, answer in zip(cases, answers, strict=True):
            tests.append(f"assert {name}({', '.join(map(repr, inputs))}) == {answer!r}")
        body = _EASY_SOLUTIONS[name].format(k=k)
        out.append(
            CodeTask(
                id=f"easy/{split}/{seed}/{i}",
                problem=f"Write a Python function {name}({args}) that {text.format(k=k)}.",
                entry_point=name,
                tests=tuple(tests),
                visible=(0,),
                solution=f"def {name}({args}):\n    return {body}",
            )
        )
    return tuple(out)


_EASY_SOLUTIONS = {
    "sum_even": "sum(x for x in xs if x % 2 == 0)",
    "count_above": "sum(1 for x in xs if x > {k})",
    "add_k": "[x + {k} for x in xs]",
    "times_k": "[x * {k} for x in xs]",
    "largest": "max(xs)",
    "smallest": "min(xs)",
    "keep_above": "[x for x in xs if x > {k}]",
    "reverse_text": "s[::-1]",
    "count_vowels": "sum(c in 'aeiou' for c in s)",
    "repeat_text": "s * {k}",
    "add_then_k": "a + b + {k}",
    "larger": "max(a, b)",
    "count_k": "xs.count({k})",
    "without_k": "[x for x in xs if x != {k}]",
    "first_k": "xs[:{k}]",
    "divisible": "n % {k} == 0",
    "shout": "s.upper()",
}
