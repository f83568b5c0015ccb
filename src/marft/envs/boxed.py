"""The ``\\boxed{}`` answer convention of math solutions, read by the math grader and by the MATH
dataset's rows (:mod:`marft.envs.hub`)."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text``, braces balanced, or None.

    >>> last_boxed("so $\\\\boxed{\\\\frac{1}{2}}$, or \\\\boxed{3}")
    '3'
    """
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start : i - 1].strip()
    return None
