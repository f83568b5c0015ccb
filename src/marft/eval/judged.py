"""Evaluation of judged (open-ended) work: win rate against the untrained team and the
length-controlled score gain (``marft eval`` on a ``judged`` env; docs/judged.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from marft.envs.judged.env import JudgeRequest


def length_controlled_gain(scores: Sequence[float], words: Sequence[float], trained: Sequence[bool]) -> dict:
    """How much of a score gain is not explained by length.

    Fits ``score = a + b * log(1 + words) + c * trained`` by least squares over both teams'
    responses (as AlpacaEval's length-controlled win rate regresses on length). ``c`` is the gain
    at equal length; the raw gain is the difference of means.

    Args:
        scores: ``[S]`` judge scores of every response (both teams).
        words: ``[S]`` their lengths in words.
        trained: ``[S]`` whether each response is the trained team's.

    Returns:
        ``{"raw_gain", "length_controlled_gain", "length_slope"}`` (``b``: score per unit of log length).
    """
    y = torch.tensor(scores, dtype=torch.float64)
    t = torch.tensor(trained, dtype=torch.float64)
    x = torch.stack([torch.ones_like(y), torch.log1p(torch.tensor(words, dtype=torch.float64)), t], 1)
    coef = torch.linalg.lstsq(x, y[:, None], driver="gelsd").solution[:, 0]
    raw = float(y[t == 1].mean() - y[t == 0].mean()) if 0 < t.sum() < len(t) else math.nan
    return {"raw_gain": raw, "length_controlled_gain": float(coef[2]), "length_slope": float(coef[1])}


def compare_with_untrained(judge, tasks, trained, untrained) -> dict[str, float]:
    """The trained team against the untrained one, judged pairwise (both orders averaged).

    Args:
        judge: the env's judge (``score`` with a ``reference`` compares).
        tasks: the env's tasks (``prompt``, ``rubric``) by problem index.
        trained, untrained: :class:`~marft.eval.evaluate.ProblemResult` lists over the same
            problems and samples, with ``responses`` and ``metrics``.

    Returns:
        ``win_rate`` (mean probability that the trained response is the better one), ``wins``
        (share of pairs it wins, probability > 0.5), and the length-controlled gain of the
        pointwise judge score (:func:`length_controlled_gain`).
    """
    requests, fixed, scores, words, flags = [], [], [], [], []
    for a, b in zip(trained, untrained, strict=True):
        task = tasks[a.index]
        for ra, rb in zip(a.responses, b.responses, strict=True):
            if ra and rb:
                requests.append(JudgeRequest(task.prompt, task.rubric, ra, rb))
            else:  # a team whose graded agent did not answer loses (both silent: a tie), as in training
                fixed.append(0.5 if not (ra or rb) else float(bool(ra)))
        for result, flag in ((a, True), (b, False)):
            for m in result.metrics:
                scores.append(m["judge_score"])
                words.append(m["response_words"])
                flags.append(flag)
    p = judge.score(requests) + fixed
    out = {"win_rate": sum(p) / len(p), "wins": sum(x > 0.5 for x in p) / len(p)}
    return out | length_controlled_gain(scores, words, flags)
