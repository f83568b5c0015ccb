"""Datasets for envs: local JSONL files and Hugging Face datasets, with errors that say what to do."""

from __future__ import annotations

import json
from collections.abc import Callable

from marft.config import ConfigError


def load_hf_rows(data: str, split: str, data_files: tuple[str, ...], offline_hint: Callable[[str], str]):
    """The rows of Hugging Face dataset ``data`` (``hf:NAME[:CONFIG]``).

    Raises:
        ConfigError: (key ``env.kwargs.data``) without the datasets package, or when the dataset
            cannot be loaded; the message ends with ``offline_hint(NAME)``: the local alternative.
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "env.kwargs.data", f"{data!r} needs the datasets package: pip install datasets"
        ) from None
    name, _, config = data[3:].partition(":")
    kw = {"data_files": list(data_files)} if data_files else {}
    try:
        return datasets.load_dataset(name, config or None, split=split, **kw)
    except Exception as e:  # noqa: BLE001 (network, hub, missing config or split: one message)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {first}"[:300]
        raise ConfigError(
            "env.kwargs.data", f"cannot load Hugging Face dataset {data!r} ({reason}); {offline_hint(name)}"
        ) from None


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
