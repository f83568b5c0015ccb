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

MAX_TIMEOUT_S = 2.0
MAX_ANSWER_CHARS = 400

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+?)(?:\s*(?:\.\s|\.?$|\n))", re.IGNORECASE
)
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_PLAIN_NUMBER_WITH_WORDS = re.compile(r"^\s*\\?\$?\s*(-?\d[\d,]*(?:\.\d+)?)\s*([A-Za-z][A-Za-z ]*)?\.?$")
# Trailing words that change the value: never stripped ("7 million" is not 7, "2 pi" is not 2).
_VALUE_WORDS = {
    "million",
    "millions",
    "billion",
    "billions",
    "trillion",
    "thousand",
    "thousands",
    "hundred",
    "hundreds",
    "dozen",
    "dozens",
    "half",
    "halves",
    "third",
    "thirds",
    "quarter",
    "quarters",
    "fourth",
    "fourths",
    "fifth",
    "fifths",
    "tenth",
    "tenths",
    "percent",
    "squared",
    "cubed",
    "times",
    "over",
    "plus",
    "minus",
    "sqrt",
    "root",
    "pi",
    "factorial",
    "inverse",
}
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

    Drops a plain number's thousands separators, dollar sign and trailing unit words (``$1,000
    dollars`` -> ``1000``, ``18 eggs`` -> ``18``); words that change the value (``million``,
    ``pi``, single letters such as ``x`` or ``i``) are kept, so those answers stay wrong.
    """
    a = answer.strip().strip("$").strip()
    m = _PLAIN_NUMBER_WITH_WORDS.match(a)
    if m:
        words = (m.group(2) or "").lower().split()
        # only unit-like words: at least 3 letters, none of which changes the value
        if all(len(w) >= 3 and w not in _VALUE_WORDS for w in words):
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

    def _start(self) -> bool:
        # spawn, not fork: the trainer holds torch/OpenMP, tokenizer and logging threads whose locks a
        # forked child could inherit mid-use; spawn also gives the child no copy of our pipe end,
        # so it sees EOF and exits if this process dies.
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        # Import math-verify now, so that the first call's limit measures grading, not imports.
        try:
            self._conn.send(("1", "1"))
            if self._conn.poll(120):
                self._conn.recv()
                return True
        except (OSError, EOFError):
            pass
        self._kill()
        return False

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        self._proc = self._conn = None

    def __call__(self, pred: str, ref: str, timeout: float) -> bool | None:
        """True/False, or None when no verdict came in time (the worker is then replaced)."""
        with self._lock:
            if (self._proc is None or not self._proc.is_alive()) and not self._start():
                return None
            try:
                self._conn.send((pred, ref))
                if self._conn.poll(timeout):
                    return bool(self._conn.recv())
            except (OSError, EOFError):
                pass
            self._kill()  # overran or died: the next call gets a fresh worker
            return None


_WORKER = _Worker()


_CACHE: dict[tuple[str, str], bool] = {}
_CACHE_SIZE = 65536


def _equivalent(pred: str, ref: str, timeout: float) -> bool:
    """Cached verdicts; a timeout is not a verdict and is not cached (a busy machine may be slow)."""
    key = (pred, ref)
    if key in _CACHE:
        return _CACHE[key]
    verdict = _WORKER(pred, ref, timeout)
    if verdict is None:
        return False
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = verdict
    return verdict


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
