"""Grading math answers: extract the final answer, then decide equivalence with math-verify.

``grade(response, reference)`` never raises and never hangs. Each call has a time limit (2 s at
most); the symbolic work runs in a worker process that is killed and replaced if it overruns,
because sympy can hang in C code where no signal reaches it (think ``10^{10^{10}}``).

Example:
    >>> grade("... so the total is \\\\boxed{\\\\frac{1}{2}}.", "0.5")
    True
    >>> grade("The answer is 1,000 dollars.", "1000")
    True
"""

from __future__ import annotations

import multiprocessing as mp
import re
import sys
import threading
from functools import lru_cache

MAX_TIMEOUT_S = 2.0
MAX_ANSWER_CHARS = 400

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+?)(?:\s*(?:\.\s|\.?$|\n))", re.IGNORECASE
)
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_PLAIN_NUMBER_WITH_WORDS = re.compile(r"^\s*\\?\$?\s*(-?\d[\d,]*(?:\.\d+)?)\s*(?:[A-Za-z][A-Za-z .]*)?$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start : i - 1].strip()
    return None


def extract_answer(response: str) -> str | None:
    """The final answer of a model response.

    In order: the last ``\\boxed{}``; "the answer is X" / "answer: X" (last occurrence); a GSM8K
    ``#### X`` line; the last number in the text. None when nothing looks like an answer.
    """
    if not isinstance(response, str) or not response.strip():
        return None
    boxed = _last_boxed(response)
    if boxed:
        return boxed
    found = _ANSWER_IS.findall(response)
    if found:
        return found[-1].strip().strip("$").strip()
    gsm = _GSM8K.findall(response)
    if gsm:
        return gsm[-1].strip()
    numbers = _NUMBER.findall(response)
    return numbers[-1].rstrip(".,") if numbers else None


def normalize(answer: str) -> str:
    """Cheap textual clean-ups that math-verify does not do itself.

    Drops a plain number's thousands separators, dollar sign and trailing words (``$1,000 dollars``
    -> ``1000``); strips surrounding ``$`` and whitespace.
    """
    a = answer.strip().strip("$").strip()
    m = _PLAIN_NUMBER_WITH_WORDS.match(a)
    if m:
        a = m.group(1)
    if _THOUSANDS.match(a):
        a = a.replace(",", "")
    return a


# ------------------------------------------------------------------------------ the worker process


def _verify_in_worker(pred: str, ref: str) -> bool:
    from math_verify import parse, verify

    gold = parse("\\boxed{" + ref + "}", parsing_timeout=None, raise_on_error=False)
    target = parse("\\boxed{" + pred + "}", parsing_timeout=None, raise_on_error=False)
    if not gold or not target:
        return False
    return bool(verify(gold, target, timeout_seconds=None, raise_on_error=False))


def _worker_main(conn) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    sys.setrecursionlimit(3000)
    while True:
        try:
            pred, ref = conn.recv()
        except EOFError:
            return
        try:
            ok = _verify_in_worker(pred, ref)
        except BaseException:  # noqa: BLE001 (RecursionError, sympy internals: never crash)
            ok = False
        conn.send(ok)


class _Worker:
    """One long-lived grading process; replaced when a call overruns its time limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self._proc.start()
        self._conn = parent
        # Import math-verify now, so that the first call's limit measures grading, not imports.
        self._conn.send(("1", "1"))
        self._conn.poll(60)
        self._conn.recv()

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        self._proc = self._conn = None

    def __call__(self, pred: str, ref: str, timeout: float) -> bool:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            try:
                self._conn.send((pred, ref))
                if self._conn.poll(timeout):
                    return bool(self._conn.recv())
            except (OSError, EOFError):
                pass
            self._kill()  # overran or died: the next call gets a fresh worker
            return False


_WORKER = _Worker()


@lru_cache(maxsize=65536)
def _equivalent(pred: str, ref: str, timeout: float) -> bool:
    return _WORKER(pred, ref, timeout)


def grade(response: str, reference: str, timeout: float = MAX_TIMEOUT_S) -> bool:
    """Whether ``response``'s final answer equals ``reference`` mathematically.

    Extraction: see :func:`extract_answer`. Equivalence: math-verify (fractions vs decimals, LaTeX
    forms, tuples, intervals, sets, units, ``\\%``, thousands separators, dollar signs).

    Args:
        response: a full model response.
        reference: the dataset's answer (LaTeX for MATH, a plain number for GSM8K).
        timeout: seconds for the symbolic check (capped at 2).

    Returns:
        True if equivalent; False if not, or if the answer cannot be extracted, parsed or judged in
        time. Never raises.
    """
    try:
        if not isinstance(reference, str) or not reference.strip():
            return False
        pred = extract_answer(response)
        if pred is None or len(pred) > MAX_ANSWER_CHARS:
            return False
        pred, ref = normalize(pred), normalize(reference)
        if pred == ref:
            return True
        return _equivalent(pred, ref, min(float(timeout), MAX_TIMEOUT_S))
    except Exception:  # noqa: BLE001 (the contract is: never raise)
        return False
