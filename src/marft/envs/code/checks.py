"""What the checker needs to know about a job's tests, read from their source once, in the trainer.

The checker (:mod:`marft.envs.code.inside.checker`) takes from the program only the names its
tests use; it imports the standard-library modules they use before the program's process starts;
and for a failed ``assert CALL == EXPECTED`` it shows what ``CALL`` returned. All three come from
the tests' syntax trees, computed here (cached: a task's tests are the same at every attempt), so
the sandbox itself never parses them.
"""

from __future__ import annotations

import ast
import builtins
import sys
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class CheckPlan:
    """Attributes:
    names: every name the tests and the checker's code use, less the builtins (but the entry
        point, which may shadow one: mbpp/126 defines ``sum``).
    imports: the standard-library modules among them, and those they import.
    got: per test, the source of ``CALL`` when the test is ``assert CALL == EXPECTED``, else None.
    """

    names: tuple[str, ...]
    imports: tuple[str, ...]
    got: tuple[str | None, ...]


def _trees(sources: tuple[str, ...]) -> list[ast.AST]:
    trees = []
    for source in sources:
        try:
            trees.append(ast.parse(source))
        except (SyntaxError, ValueError):  # compiled again in the checker, where it fails as a test
            continue
    return trees


def left_of_equality(test: str) -> str | None:
    """``CALL``'s source when ``test`` is ``assert CALL == EXPECTED``, else None."""
    try:
        body = ast.parse(test).body
    except (SyntaxError, ValueError):
        return None
    if len(body) != 1 or not isinstance(body[0], ast.Assert):
        return None
    cmp = body[0].test
    if isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq):
        return ast.get_source_segment(test, cmp.left) or ast.unparse(cmp.left)
    return None


@lru_cache(maxsize=4096)
def check_plan(tests: tuple[str, ...], checker: str = "", entry_point: str = "") -> CheckPlan:
    """The :class:`CheckPlan` of a job's ``tests`` and the checker's own code."""
    used: dict[str, None] = {}
    imported: dict[str, None] = {}
    for tree in _trees((*tests, checker)):
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                used[node.id] = None
            elif isinstance(node, ast.Import):
                imported.update((alias.name.split(".")[0], None) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported[node.module.split(".")[0]] = None
    if entry_point:  # HumanEval's tests call it ``candidate``, not by its name
        used[entry_point] = None
    names = tuple(n for n in used if n == entry_point or n not in vars(builtins))
    stdlib = sys.stdlib_module_names
    imports = tuple(dict.fromkeys(n for n in (*names, *imported) if n in stdlib))
    return CheckPlan(names, imports, tuple(left_of_equality(t) for t in tests))
