"""Local JSONL datasets for envs, with errors that say what to do (the hub's: :mod:`marft.envs.hub`)."""

from __future__ import annotations

import json

from marft.config import ConfigError


def read_jsonl(data: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line of a JSONL file.

    Raises:
        ConfigError: (key ``env.kwargs.data``) an unreadable file, or a line that is not a JSON
            object (with its number).
    """
    rows = []
    try:
        with open(data) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(
                        "env.kwargs.data", f"{data} line {n} is not valid JSON ({e}); fix or remove that line"
                    ) from None
                if not isinstance(row, dict):
                    raise ConfigError(
                        "env.kwargs.data", f"{data} line {n} is not a JSON object (got {type(row).__name__})"
                    )
                rows.append((n, row))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("env.kwargs.data", f"cannot read {data} ({e})") from None
    return rows
