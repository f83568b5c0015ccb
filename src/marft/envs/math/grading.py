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

import atexit
import contextlib
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from marft.envs.boxed import last_boxed

MAX_TIMEOUT_S = 2.0
MAX_ANSWER_CHARS = 400
STARTUP_TIMEOUT_S = 120.0
"""How long a new worker may take to start and import math-verify before it counts as failed."""

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


def extract_answer(response: str) -> str | None:
    """The final answer of a model response.

    In order: the last ``\\boxed{}``; "the answer is X" / "answer: X" (last occurrence); a GSM8K
    ``#### X`` line; the last number in the text. None when nothing looks like an answer.
    """
    if not isinstance(response, str) or not response.strip():
        return None
    boxed = last_boxed(response)
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


class Verdict(str, Enum):
    """The outcome of one grading call. ``TIMEOUT`` and ``FAILURE`` are not verdicts on the answer:
    :func:`grade` reports them as False, and they are counted (see :func:`grader_counts`)."""

    CORRECT = "correct"
    WRONG = "wrong"
    TIMEOUT = "timeout"
    """The symbolic check overran its time limit (the worker was killed and is replaced)."""
    FAILURE = "failure"
    """The worker could not start, died, or math-verify raised."""


@dataclass(frozen=True)
class GraderCounts:
    """Grading calls in this process so far, and those that gave no verdict."""

    calls: int = 0
    timeouts: int = 0
    failures: int = 0

    def __sub__(self, other: GraderCounts) -> GraderCounts:
        return GraderCounts(
            self.calls - other.calls, self.timeouts - other.timeouts, self.failures - other.failures
        )

    @property
    def no_verdict_share(self) -> float:
        """Share of calls that timed out or failed (0 when there were no calls)."""
        return (self.timeouts + self.failures) / self.calls if self.calls else 0.0


class _Worker:
    """One long-lived grading process (:mod:`marft.envs.math.grader_worker`), replaced when a call
    overruns its time limit or the process dies.

    Started with ``python -m`` rather than multiprocessing's spawn, so that it never imports the
    caller's ``__main__``; in a session of its own, so that Ctrl-C in a terminal (which the trainer
    turns into a checkpoint at the end of the iteration) does not kill it mid-iteration.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        atexit.register(self._kill)

    def _start(self) -> bool:
        package_root = str(Path(__file__).resolve().parents[3])  # so the worker imports this marft
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "marft.envs.math.grader_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError:
            self._proc = None
            return False
        self._buffer = b""
        # Import math-verify now, so that the first call's limit measures grading, not imports.
        if self._ask("1", "1", STARTUP_TIMEOUT_S) == "1":
            return True
        self._kill()
        return False

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=5)
            for pipe in (self._proc.stdin, self._proc.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()
        self._proc = None

    def _ask(self, pred: str, ref: str, timeout: float) -> str | None:
        """Send one request and read one answer line, or None if none came within ``timeout``."""
        assert self._proc is not None
        try:
            self._proc.stdin.write((json.dumps([pred, ref]) + "\n").encode())
            self._proc.stdin.flush()
        except (OSError, ValueError):
            return None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:  # the worker died
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def __call__(self, pred: str, ref: str, timeout: float) -> Verdict:
        with self._lock:
            if (self._proc is None or self._proc.poll() is not None) and not self._start():
                return Verdict.FAILURE
            answer = self._ask(pred, ref, timeout)
            if answer in ("1", "0", "E"):
                return {"1": Verdict.CORRECT, "0": Verdict.WRONG, "E": Verdict.FAILURE}[answer]
            died = self._proc.poll() is not None
            self._kill()  # overran or died: the next call gets a fresh worker
            return Verdict.FAILURE if died else Verdict.TIMEOUT


_WORKER = _Worker()
_COUNTS = {"calls": 0, "timeouts": 0, "failures": 0}
_COUNTS_LOCK = threading.Lock()
_warned = False

_CACHE: dict[tuple[str, str], bool] = {}
_CACHE_SIZE = 65536


def grader_counts() -> GraderCounts:
    """Grading calls made in this process so far, with their time-outs and failures."""
    with _COUNTS_LOCK:
        return GraderCounts(**_COUNTS)


def warn_if_unreliable(max_share: float, min_calls: int = 20) -> None:
    """Warn once per process when more than ``max_share`` of the grading calls so far gave no
    verdict (time-outs, failures): those answers were scored as wrong."""
    global _warned
    counts = grader_counts()
    if _warned or counts.calls < min_calls or counts.no_verdict_share <= max_share:
        return
    _warned = True
    warnings.warn(
        f"the math grader gave no verdict on {counts.timeouts + counts.failures} of {counts.calls} "
        f"calls ({counts.timeouts} time-outs, {counts.failures} failures); those answers were scored "
        "as wrong. A busy machine makes time-outs likelier: lower run.torch_threads or the load.",
        RuntimeWarning,
        stacklevel=2,
    )


def _equivalent(pred: str, ref: str, timeout: float) -> Verdict:
    """Cached verdicts; a timeout or failure is not a verdict and is not cached (a busy machine
    may be slow)."""
    key = (pred, ref)
    if key in _CACHE:
        return Verdict.CORRECT if _CACHE[key] else Verdict.WRONG
    verdict = _WORKER(pred, ref, timeout)
    if verdict in (Verdict.CORRECT, Verdict.WRONG):
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = verdict is Verdict.CORRECT
    return verdict


def _judge_uncounted(response: str, reference: str, timeout: float) -> Verdict:
    if not isinstance(reference, str) or not reference.strip():
        return Verdict.WRONG
    pred = extract_answer(response)
    if pred is None or len(pred) > MAX_ANSWER_CHARS:
        return Verdict.WRONG
    pred, ref = normalize(pred), normalize(reference)
    if pred == ref:
        return Verdict.CORRECT
    return _equivalent(pred, ref, min(float(timeout), MAX_TIMEOUT_S))


def judge(response: str, reference: str, timeout: float = MAX_TIMEOUT_S) -> Verdict:
    """Like :func:`grade`, but says when no verdict could be reached (time-out, worker failure).

    Every call is counted (:func:`grader_counts`). Never raises.
    """
    try:
        verdict = _judge_uncounted(response, reference, timeout)
    except Exception:  # noqa: BLE001 (the contract is: never raise)
        verdict = Verdict.FAILURE
    with _COUNTS_LOCK:
        _COUNTS["calls"] += 1
        _COUNTS["timeouts"] += verdict is Verdict.TIMEOUT
        _COUNTS["failures"] += verdict is Verdict.FAILURE
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
    return judge(response, reference, timeout) is Verdict.CORRECT
