"""What runs inside the code sandbox: two processes per program, so that the verdict is decided by
code the program cannot reach.

* the **program's process** (:mod:`.solution`) loads the untrusted program and answers calls with
  plain data; it never holds a test, an expected value or the channel to the trainer;
* the **checker** (:mod:`.checker`) runs the task's tests against stubs that forward each call to
  the program's process, compares builtin values rebuilt from plain data (:mod:`.wire`), and
  reports each test's outcome to the trainer;
* the **launcher** (:mod:`.launch`) is the checker before it forks the program's process.

These modules import nothing but the standard library, and each other only by ``from
marft.envs.code.inside.X import ...``: :data:`SOURCE` is their text joined into one program, those
imports dropped (their names are then defined above).
The sandbox's interpreter need not have marft installed (or be able to read it): it runs
:data:`BOOTSTRAP` (``python -I -c BOOTSTRAP FD``), which reads :data:`SOURCE` compiled, as
:func:`compiled` gives it, from the socket ``FD`` and runs it. Compiling the program at every start
would cost 9 ms a run; this costs 0.1 ms.
"""

from __future__ import annotations

import ast
import subprocess
from functools import lru_cache
from pathlib import Path

_ORDER = ("wire.py", "solution.py", "checker.py", "launch.py")


def _joined() -> str:
    parts = []
    for i, name in enumerate(_ORDER):
        text = (Path(__file__).parent / name).read_text()
        lines = text.splitlines()
        for node in ast.parse(text).body:
            ours = isinstance(node, ast.ImportFrom) and (node.module or "").startswith(__name__)
            future = isinstance(node, ast.ImportFrom) and node.module == "__future__" and i > 0
            if ours or future:
                for line in range(node.lineno - 1, node.end_lineno or node.lineno):
                    lines[line] = ""
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


SOURCE = _joined()
"""The sandbox's program: the four modules in order, as one."""

BOOTSTRAP = """\
import marshal, os, sys
fd = int(sys.argv[1])
def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            os._exit(1)
        data += chunk
    return data
exec(marshal.loads(read(int.from_bytes(read(4), "big"))))
"""
"""The sandbox's command line program: read the compiled :data:`SOURCE`, run it as ``__main__``."""

_COMPILE = (
    "import marshal, sys; sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.read(), "
    "'marft-sandbox', 'exec')))"
)


@lru_cache(maxsize=8)
def compiled(python: str) -> bytes:
    """:data:`SOURCE` compiled by ``python`` (the code format is the interpreter's own), with its
    length in 4 bytes before it: the first thing :data:`BOOTSTRAP` reads."""
    code = subprocess.run(
        [python, "-I", "-c", _COMPILE], input=SOURCE.encode(), capture_output=True, check=True, timeout=60
    ).stdout
    return len(code).to_bytes(4, "big") + code
