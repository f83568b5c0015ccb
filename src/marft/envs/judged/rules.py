"""Rule checks for open-ended work: length bounds, required and forbidden text, and the shape of a
Markdown slide deck. Each check is a plain function of the text, so a response that breaks the
format fails whatever a judge model thinks of it.

A slide deck is Markdown in which every slide starts with a heading line (``#``, ``##`` or ``###``,
a space and the title; ``#hashtag`` is not a heading); its bullets are lines starting with ``-``,
``*`` or ``+``.

Example:
    >>> rules = Rules(slides=2, min_bullets=1, max_bullets=3)
    >>> check_rules("## One\\n- a\\n- b\\n## Two\\n- c", rules)
    {'slides': True, 'titles': True, 'bullets': True}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HEADING = re.compile(r"^\s{0,3}#{1,3}(?:\s+(.*))?$")
_BULLET = re.compile(r"^\s*[-*+]\s+\S")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass
class Rules:
    """What a response must look like (every field optional; None or empty: not checked)."""

    min_words: int | None = None
    """At least this many words."""
    max_words: int | None = None
    """At most this many words (also the target of ``env.kwargs.length_penalty``)."""
    required: list[str] = field(default_factory=list)
    """Text that must appear (case-insensitive), e.g. a section name."""
    forbidden: list[str] = field(default_factory=list)
    """Text that must not appear (case-insensitive), e.g. flattery aimed at the judge."""
    slides: int | None = None
    """A slide deck of exactly this many slides (headings)."""
    titles: bool | None = None
    """Every slide's heading has a title (default: checked when ``slides`` is set)."""
    min_bullets: int | None = None
    """Every slide has at least this many bullets."""
    max_bullets: int | None = None
    """Every slide has at most this many bullets."""
    max_bullet_words: int | None = None
    """No bullet is longer than this many words (a deck padded with filler clauses breaks it)."""

    def __post_init__(self) -> None:
        from marft.config import ConfigError

        for name in ("min_words", "max_words", "slides", "min_bullets", "max_bullets", "max_bullet_words"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(name, f"must be a non-negative integer or null, got {value!r}")
        for name in ("required", "forbidden"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(name, f"must be a list of strings, got {value!r}")
        if self.titles is not None and not isinstance(self.titles, bool):
            raise ConfigError("titles", f"must be true, false or null, got {self.titles!r}")
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ConfigError("min_words", "must not exceed max_words")
        if self.titles is None and self.slides is not None:
            self.titles = True

    @property
    def empty(self) -> bool:
        """Whether no rule is set (the rules term of the reward is then left out)."""
        return not check_rules("", self)


def count_words(text: str) -> int:
    """Words of ``text`` (whitespace-separated; Markdown marks such as ``-`` and ``##`` excluded)."""
    return sum(1 for w in text.split() if re.search(r"\w", w))


def repeated_share(text: str, n: int = 3) -> float:
    """Share of the word ``n``-grams of ``text`` (lower-cased words, punctuation and Markdown marks
    ignored) that already occurred earlier in it: 0 for text that never repeats itself, near 0.5
    for a text written twice. Padding with a recurring phrase or repeating every bullet raises it; a
    deck that makes each point once stays near 0.

    Example:
        >>> round(repeated_share("The sky is blue. The sky is blue."), 3)  # 2 of 6 trigrams
        0.333
    """
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def split_slides(text: str) -> list[tuple[str, list[str]]]:
    """``(title, bullet lines)`` of each slide: a heading starts a slide; text before the first
    heading belongs to no slide."""
    slides: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            slides.append(((heading.group(1) or "").strip(), []))
        elif slides and _BULLET.match(line):
            slides[-1][1].append(line.strip())
    return slides


def check_rules(text: str, rules: Rules) -> dict[str, bool]:
    """Each rule that is set, and whether ``text`` keeps it (an empty dict: no rules).

    Keys: ``min_words``, ``max_words``, ``required``, ``forbidden``, ``slides``, ``titles``,
    ``bullets`` (every slide within the bullet bounds), ``bullet_words`` (no bullet over
    ``max_bullet_words``).
    """
    out: dict[str, bool] = {}
    words = count_words(text)
    lower = text.lower()
    if rules.min_words is not None:
        out["min_words"] = words >= rules.min_words
    if rules.max_words is not None:
        out["max_words"] = words <= rules.max_words
    if rules.required:
        out["required"] = all(r.lower() in lower for r in rules.required)
    if rules.forbidden:
        out["forbidden"] = not any(f.lower() in lower for f in rules.forbidden)
    deck = (
        split_slides(text)
        if rules.slides is not None
        or rules.titles
        or rules.min_bullets
        or rules.max_bullets
        or rules.max_bullet_words is not None
        else []
    )
    if rules.slides is not None:
        out["slides"] = len(deck) == rules.slides
    if rules.titles:
        out["titles"] = bool(deck) and all(count_words(title) > 0 for title, _ in deck)
    if rules.min_bullets is not None or rules.max_bullets is not None:
        lo, hi = rules.min_bullets or 0, rules.max_bullets if rules.max_bullets is not None else 10**9
        out["bullets"] = bool(deck) and all(lo <= len(bullets) <= hi for _, bullets in deck)
    if rules.max_bullet_words is not None:
        cap = rules.max_bullet_words
        out["bullet_words"] = bool(deck) and all(
            count_words(b) <= cap for _, bullets in deck for b in bullets
        )
    return out
