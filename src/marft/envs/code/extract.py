"""The program in a model's answer: fenced blocks, MBPP's ``[BEGIN] ... [DONE]``, or bare code.

Models wrap code in many ways, often several times in one answer (a draft, then a fix; the
function, then example calls), and a generation cut by the token limit ends in the middle of a
function. :func:`extract_code` takes every candidate block, keeps those that parse as Python, and
returns the last one that defines the wanted name: the model's final, complete version.
"""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_BEGIN = re.compile(r"\[BEGIN\](.*?)(?:\[DONE\]|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(def |class |async def |import |from \S+ import |@)")
_NOT_PYTHON = {"bash", "sh", "shell", "console", "text", "txt", "json", "yaml", "output"}


def _parses(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def _defines(tree: ast.Module, name: str) -> bool:
    """A top-level function, class or assignment binds ``name``."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def _bare_blocks(text: str) -> list[str]:
    """Runs of code in prose: from a line that starts a definition or an import, through the
    indented, blank and further top-level code lines after it, cut back to the longest prefix
    that parses (a generation cut mid-line or mid-function loses only its broken tail)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if not _CODE_START.match(lines[i]):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and (
            not lines[j].strip() or lines[j][0] in " \t#" or _CODE_START.match(lines[j])
        ):
            j += 1
        for end in range(j, i, -1):
            code = "\n".join(lines[i:end]).strip("\n")
            if _parses(code) is not None:
                blocks.append(code)
                break
        i = j
    return blocks


def candidates(text: str) -> list[str]:
    """Every code block of ``text`` that parses, in the order written: ``[BEGIN]`` blocks and
    fenced blocks if there are any (an unclosed last fence runs to the end), else runs of bare code.
    A fenced block that does not parse as a whole is cut back as bare code is."""
    found = [m.group(1) for m in _BEGIN.finditer(text)]
    found += [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() not in _NOT_PYTHON]
    if not found:
        return _bare_blocks(text)
    out = []
    for block in found:
        block = block.strip("\n")
        out += [block] if _parses(block) is not None else _bare_blocks(block)
    return out


def extract_code(text: str, name: str | None = None) -> str | None:
    """The program to run from a model's answer.

    Args:
        text: the answer as generated.
        name: the function the task wants (MBPP's test names it, HumanEval's ``entry_point``);
            None: any code.

    Returns:
        The last block that parses and defines ``name`` (any block that parses, when ``name`` is
        None), with the blocks before it that define other things it may use (helpers, imports)
        prepended; None when there is none.
    """
    blocks = [(b, tree) for b in candidates(text) if (tree := _parses(b)) is not None]
    for k in range(len(blocks) - 1, -1, -1):
        code, tree = blocks[k]
        if name is None or _defines(tree, name):
            helpers = [b for b, t in blocks[:k] if not (name and _defines(t, name)) and _only_definitions(t)]
            return "\n\n".join([*helpers, code])
    return None


def _only_definitions(tree: ast.Module) -> bool:
    """Imports, functions, classes and assignments only: safe to prepend (no example calls)."""
    kinds = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign)
    return bool(tree.body) and all(isinstance(node, kinds) for node in tree.body)
