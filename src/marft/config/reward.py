"""The ``reward`` section: the judge model that scores open-ended work, a held-out judge that
watches it, and the guard that flags reward hacking (see ``docs/judged.md``)."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

from marft.config.errors import _check

POINTWISE_TEMPLATE = (
    "Task:\n{task}\n\nRubric:\n{rubric}\n\nResponse:\n{response}\n\n"
    "Grade the response against the rubric on a scale from 1 (fails it) to {max_score} (meets every "
    "point). Reply with the number only."
)
PAIRWISE_TEMPLATE = (
    "Task:\n{task}\n\nRubric:\n{rubric}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
    "Which response meets the rubric better? Reply with the letter A or B only."
)
HELDOUT_TEMPLATE = (
    "You are reviewing work for a demanding reader.\n\nThe assignment was:\n{task}\n\n"
    "What the reader expects:\n{rubric}\n\nThe submission:\n{response}\n\n"
    "On a scale of 1 to {max_score}, how useful is this submission to the reader? Reply with one digit."
)


def _fields(template: str) -> set[str] | None:
    """The ``{names}`` a template uses; None when it is not a valid format string."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError:
        return None


@dataclass
class JudgeConfig:
    """A frozen language model that scores a response against a rubric (G-Eval style: the
    expected score under its probabilities of the score tokens, not a sampled reply)."""

    model: str | None = None
    """None: the team's own base model with every adapter disabled (no extra memory); or a local
    folder / Hugging Face name of another chat model (loaded frozen, in ``model.dtype``)."""
    mode: Literal["pointwise", "pairwise"] = "pointwise"
    """``pointwise``: a score from 1 to ``max_score``; ``pairwise``: the probability that the
    response beats the task's reference response (both orders averaged: no position bias)."""
    system_prompt: str = "You are a strict, fair grader of written work."
    """The judge's system message (through its tokenizer's chat template)."""
    template: str = POINTWISE_TEMPLATE
    """Pointwise prompt: ``{task}``, ``{rubric}``, ``{response}``, ``{max_score}``."""
    pairwise_template: str = PAIRWISE_TEMPLATE
    """Pairwise prompt: ``{task}``, ``{rubric}``, ``{a}``, ``{b}``; the reply is A or B."""
    answer_prefix: str = ""
    """Text placed at the start of the judge's reply, before the score token (e.g. ``"Rating: "``:
    small chat models then put most of their probability on the score tokens)."""
    pairwise_answer_prefix: str = ""
    """The same for the pairwise reply, before ``A`` or ``B``."""
    max_score: int = 5
    """Scores run from 1 to this (2-9: each score is one token)."""
    batch_size: int = 8
    """Prompts per judge forward."""
    max_response_tokens: int = 512
    """Longer responses are cut to this many tokens before judging (the cut is counted)."""
    redundancy_penalty: float = 1.0
    """Subtracted from the score (in [0, 1], clipped at 0) times the share of the response's word
    trigrams that repeat an earlier one (:func:`marft.envs.judged.rules.repeated_share`): padding
    with a recurring phrase or repeating bullets lowers the score instead of raising it (small
    judges reward length). 0: the judge's score alone."""
    cache_size: int = 20_000
    """Judge scores kept by content hash (a repeated prompt costs no forward). The cache is saved in
    checkpoints (about 40 bytes a score) and, under Ray, sent with each rollout worker's state every
    iteration: keep it moderate."""

    def __post_init__(self) -> None:
        _check(2 <= self.max_score <= 9, "max_score", "must be between 2 and 9 (one token per score)")
        _check(self.batch_size >= 1, "batch_size", "must be a positive integer")
        _check(self.max_response_tokens >= 1, "max_response_tokens", "must be a positive integer")
        _check(self.cache_size >= 0, "cache_size", "must be >= 0 (0: no cache)")
        _check(self.redundancy_penalty >= 0, "redundancy_penalty", "must be >= 0 (0: off)")
        allowed = {"task", "rubric", "response", "max_score"}
        used = _fields(self.template)
        _check(
            used is not None and used <= allowed and "response" in used,
            "template",
            f"may use only {{{'}, {'.join(sorted(allowed))}}} and must use {{response}}",
        )
        pair = {"task", "rubric", "a", "b"}
        used = _fields(self.pairwise_template)
        _check(
            used is not None and used <= pair and {"a", "b"} <= used,
            "pairwise_template",
            "may use only {task}, {rubric}, {a}, {b} and must use {a} and {b}",
        )


@dataclass
class GuardConfig:
    """The reward-hacking check: a run is flagged when the training judge's score rises while the
    held-out judge's does not (compared over the first and the latest ``window`` iterations)."""

    window: int = 5
    """Iterations averaged at each end."""
    min_gain: float = 0.05
    """A rise of the training judge's mean score smaller than this is not checked."""
    heldout_share: float = 0.25
    """Flag when the held-out judge gained less than this share of the training judge's gain."""

    def __post_init__(self) -> None:
        _check(self.window >= 1, "window", "must be a positive integer")
        _check(self.min_gain > 0, "min_gain", "must be > 0")
        _check(0 <= self.heldout_share <= 1, "heldout_share", "must be in [0, 1]")


@dataclass
class RewardConfig:
    """Model-judged rewards (envs that use a judge, such as ``judged``; others ignore this)."""

    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The judge whose score is the reward."""
    heldout_judge: JudgeConfig | None = None
    """A second judge (another prompt or model) that scores the same responses for the guard and
    the metrics (``heldout_score``) but never the reward. None: no check."""
    guard: GuardConfig = field(default_factory=GuardConfig)
    """When to flag a run (metric ``reward_hacking``, a warning and a line in the report)."""
