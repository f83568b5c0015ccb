"""The reward-hacking guard: flag a run whose training judge's score rises while a held-out judge's
(another prompt or model scoring the same responses) does not (``reward.guard``, docs/judged.md)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("marft")

SCORE, HELDOUT, WORDS = "judge_score", "heldout_score", "response_words"


def hacking_gap(
    rows: Sequence[Mapping[str, Any]], window: int, min_gain: float, heldout_share: float
) -> tuple[float, float] | None:
    """``(gain, held-out gain)`` when the run is flagged, else None.

    The gains are the mean of ``judge_score`` (and ``heldout_score``) over the last ``window``
    rows minus the mean over the first ``window`` rows (rows without both are skipped; fewer than
    ``2 * window`` such rows: no verdict). Flagged: ``gain >= min_gain`` and the held-out gain is
    below ``heldout_share * gain``.
    """
    pairs = [
        (float(r[SCORE]), float(r[HELDOUT]))
        for r in rows
        if r.get(SCORE) is not None
        and r.get(HELDOUT) is not None
        and math.isfinite(r[SCORE])
        and math.isfinite(r[HELDOUT])
    ]
    if len(pairs) < 2 * window:
        return None
    first, last = pairs[:window], pairs[-window:]
    gain = sum(s for s, _ in last) / window - sum(s for s, _ in first) / window
    held = sum(h for _, h in last) / window - sum(h for _, h in first) / window
    return (gain, held) if gain >= min_gain and held < heldout_share * gain else None


def window_change(rows: Sequence[Mapping[str, Any]], key: str, window: int) -> float | None:
    """Mean of ``key`` over the last ``window`` rows that have it minus the mean over the first
    ``window`` (None with fewer than ``2 * window`` such rows)."""
    values = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    if len(values) < 2 * window:
        return None
    return sum(values[-window:]) / window - sum(values[:window]) / window


def guard_metrics(rows: Sequence[Mapping[str, Any]], row: Mapping[str, Any], guard) -> dict[str, float]:
    """``{"reward_hacking": 0 or 1}`` for a new metrics ``row`` after ``rows`` (empty when the run
    has no held-out judge); warns when the flag goes up."""
    if HELDOUT not in row:
        return {}
    every = [*rows, row]
    gap = hacking_gap(every, guard.window, guard.min_gain, guard.heldout_share)
    was = bool(rows) and rows[-1].get("reward_hacking") == 1.0
    if gap is not None and not was:
        words = window_change(every, WORDS, guard.window)
        length = f", the mean judged length by {words:+.1f} words" if words is not None else ""
        log.warning(
            "possible reward hacking at iteration %s: the judge's score rose by %.3f over the run, the "
            "held-out judge's by %.3f%s; read the transcripts (reward.guard, docs/judged.md)",
            row.get("iteration"),
            *gap,
            length,
        )
    return {"reward_hacking": float(gap is not None)}
