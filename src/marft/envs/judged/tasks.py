"""Judged tasks: a prompt, a rubric, an optional reference response and optional rule checks.

Two task sets ship with marft (written for it): ``research`` (short research briefs on a question,
for a named audience) and ``slides`` (a Markdown slide deck on a topic, for an audience), each with
a ``train`` and a ``heldout`` split. Any JSONL file with the same fields works as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

from marft.config import ConfigError
from marft.envs.data import read_jsonl
from marft.envs.judged.rules import Rules

BUILT_IN = {"research", "slides"}
"""The task sets that ship with marft (``env.kwargs.data``)."""
SPLITS = ("train", "heldout")
_FOLDER = Path(__file__).parent / "tasks"


@dataclass(frozen=True)
class JudgedTask:
    """One task of a judged env.

    Attributes:
        prompt: what the team is asked to do (shown to every agent).
        rubric: what a good response does (shown to the judge only).
        reference: a reference response (the pairwise judge compares with it), or None.
        rules: the rule checks of a response.
    """

    prompt: str
    rubric: str
    reference: str | None = None
    rules: Rules = field(default_factory=Rules)


def task_file(data: str, split: str) -> Path:
    """The JSONL file of a built-in set's split, or ``data`` itself for a path."""
    return _FOLDER / f"{data}_{split}.jsonl" if data in BUILT_IN else Path(data)


@lru_cache(maxsize=16)
def load_tasks(data: str, split: str = "train") -> tuple[JudgedTask, ...]:
    """The tasks of a built-in set (``research``, ``slides``) or a JSONL file whose lines hold
    ``prompt``, ``rubric`` and optionally ``reference`` and ``rules`` (:class:`Rules` fields).

    Raises:
        ConfigError: (key ``env.kwargs.data``) an unknown split, a missing file, a line without
            ``prompt`` or ``rubric``, an unknown rule or a bad rule value (with the line number).
    """
    if data in BUILT_IN and split not in SPLITS:
        raise ConfigError("env.kwargs.split", f"the {data} set has splits {', '.join(SPLITS)}, not {split!r}")
    path = task_file(data, split)
    if not path.is_file():
        raise ConfigError(
            "env.kwargs.data",
            f"task file {str(path)!r} not found; give a JSONL path or one of: {', '.join(sorted(BUILT_IN))}",
        )
    allowed = {f.name for f in fields(Rules)}
    tasks = []
    for n, row in read_jsonl(str(path)):
        where = f"{path} line {n}"
        missing = [k for k in ("prompt", "rubric") if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise ConfigError("env.kwargs.data", f"{where} needs text in {', '.join(missing)}")
        unknown = set(row) - {"prompt", "rubric", "reference", "rules"}
        rules = row.get("rules") or {}
        bad = set(rules) - allowed if isinstance(rules, dict) else {"(not an object)"}
        if unknown or bad:
            raise ConfigError(
                "env.kwargs.data",
                f"{where}: unknown {'field' if unknown else 'rule'} {sorted(unknown or bad)}; fields are "
                f"prompt, rubric, reference, rules; rules are {', '.join(sorted(allowed))}",
            )
        try:
            parsed = Rules(**rules)
        except ConfigError as e:
            raise ConfigError("env.kwargs.data", f"{where}: rules.{e.key} {e.message}") from None
        tasks.append(JudgedTask(row["prompt"], row["rubric"], row.get("reference"), parsed))
    if not tasks:
        raise ConfigError("env.kwargs.data", f"{path} holds no tasks")
    return tuple(tasks)
