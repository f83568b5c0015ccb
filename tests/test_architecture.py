"""The architecture as a contract: the import layering (import-linter, ``.importlinter``), no
import cycles, and size limits that keep modules and functions readable."""

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "marft"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
SHORT_FUNCTIONS_IN = ("rollout", "learner", "trainer")


def test_import_layering_contracts_hold():
    """Every contract of ``.importlinter`` is kept. Without import-linter this fails (it is part of
    the dev extra the README's test command installs), so a broken layering cannot pass unseen."""
    assert importlib.util.find_spec("importlinter") is not None, (
        "import-linter is missing: install the dev extra (pip install -e '.[dev]')"
    )
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run(
        [exe, str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "7 kept, 0 broken" in proc.stdout
    assert "deprecated" not in (proc.stdout + proc.stderr).lower(), proc.stderr[-2000:]


def test_no_source_file_is_too_long():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def function_lengths(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text())
    return {
        f"{path.relative_to(SRC)}:{node.name}": node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def test_no_long_function_in_rollout_learner_or_trainer():
    lengths = {}
    for package in SHORT_FUNCTIONS_IN:
        for path in (SRC / package).rglob("*.py"):
            lengths.update(function_lengths(path))
    long = {k: n for k, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
