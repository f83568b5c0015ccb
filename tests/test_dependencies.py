"""Everything the project imports is declared in pyproject.toml (its dependencies or an extra), and
no code, preset, test or benchmark refers to a path outside the repository."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TREES = ("src", "tests", "benchmarks", "examples")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    return {normalise(re.split(r"[<>=!~\[ ;]", s, maxsplit=1)[0]) for s in specs}


def imported_modules() -> dict[str, str]:
    """Top-level module -> a file that imports it, for every absolute import in the trees."""
    local = {"marft", "tests", "benchmarks", "examples"}
    local |= {p.stem for tree in TREES for p in (ROOT / tree).rglob("*.py")}
    out: dict[str, str] = {}
    for tree in TREES:
        for path in (ROOT / tree).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        out.setdefault(top, str(path.relative_to(ROOT)))
    return out


def test_every_imported_package_is_declared():
    dists = importlib.metadata.packages_distributions()
    known = declared()
    undeclared = {}
    for module, where in imported_modules().items():
        candidates = {normalise(d) for d in dists.get(module, [module])}
        if not candidates & known:
            undeclared[module] = where
    assert undeclared == {}, f"imported but declared in no pyproject dependency or extra: {undeclared}"


def test_the_check_sees_an_undeclared_import():
    assert "psutil" in imported_modules()  # benchmarks/memory.py
    assert "tomllib" not in imported_modules() and "marft" not in imported_modules()
    assert {"torch", "datasets", "psutil"} <= declared()


def test_nothing_refers_to_a_path_outside_the_repository():
    """The project stands alone: a user's clone has nothing beside it."""
    # a data folder beside the checkout, as a relative path or by climbing above the repository's root
    outside = re.compile(r"\.\./[\w-]+/data\b|(ROOT|parents\[\d\])\.parent\s*/\s*\"")
    found = []
    for tree in TREES:
        for path in (ROOT / tree).rglob("*"):
            if not path.is_file() or path == Path(__file__) or "__pycache__" in path.parts:
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if outside.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}")
    assert found == []
