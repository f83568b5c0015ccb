"""Public datasets by name: where each lives on the Hugging Face Hub, its splits, and how one of its
rows becomes a marft row. Written down once here; the math and code envs load through it.

``env.kwargs.data: hf:NAME[:CONFIG]`` loads a dataset with :func:`datasets.load_dataset` (which
caches what it downloads: a second run works offline). A dataset in :data:`CATALOGUE` arrives in
marft's row format, whatever its own field names:

* math rows ``{"id", "problem", "answer"}``: GSM8K (``openai/gsm8k``, the answer after ``####``),
  MATH (``DigitalLearningGmbH/MATH-lighteval``, the answer in the solution's last ``\\boxed{}``),
  MATH-500 (``HuggingFaceH4/MATH-500``);
* code rows: MBPP ``{"id", "problem", "tests", "setup", "challenge_tests", "solution"}``
  (``google-research-datasets/mbpp``, configs ``full`` and ``sanitized``), HumanEval
  ``{"id", "prompt", "entry_point", "test", "solution"}`` (``openai/openai_humaneval``).

A local JSONL file in the same format is the offline alternative (``--set env.kwargs.data=PATH``).
Any other hub dataset passes through with its own field names.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from marft.config import ConfigError
from marft.envs.boxed import last_boxed

Row = dict[str, Any]


def gsm8k_row(row: Mapping[str, Any]) -> Row:
    """GSM8K (``question``, ``answer`` = worked solution ending ``#### 1,234``): the number after
    ``####``, thousands separators removed."""
    return {
        "problem": str(row["question"]),
        "answer": str(row["answer"]).split("####")[-1].strip().replace(",", ""),
        "solution": str(row["answer"]),
    }


def math_row(row: Mapping[str, Any]) -> Row:
    """MATH (``problem``, ``solution``, ``level``, ``type``): the answer is the last ``\\boxed{}`` of
    the solution, or ``answer`` where the row has one (MATH-500)."""
    answer = row.get("answer")
    if answer is None:
        answer = last_boxed(str(row["solution"]))
    if answer is None:
        raise ValueError("its solution has no \\boxed{} answer")
    out = {"problem": str(row["problem"]), "answer": str(answer), "solution": str(row["solution"])}
    for key, ours in (("unique_id", "id"), ("level", "level"), ("type", "subject"), ("subject", "subject")):
        if key in row:
            out[ours] = row[key]
    return out


def mbpp_row(row: Mapping[str, Any]) -> Row:
    """MBPP, full (``text``, ``test_list``, ``test_setup_code``, ``challenge_test_list``, ``code``) or
    sanitized (``prompt``, ``test_list``, ``test_imports``, ``code``)."""
    sanitized = "text" not in row
    setup = "\n".join(row.get("test_imports") or []) if sanitized else str(row.get("test_setup_code") or "")
    return {
        "id": f"mbpp/{row['task_id']}",
        "problem": str(row["prompt"] if sanitized else row["text"]),
        "tests": [str(t) for t in row["test_list"]],
        "setup": setup,
        "challenge_tests": [str(t) for t in row.get("challenge_test_list") or []],
        "solution": str(row["code"]),
    }


def humaneval_row(row: Mapping[str, Any]) -> Row:
    """HumanEval (``task_id``, ``prompt``, ``canonical_solution``, ``test``, ``entry_point``)."""
    return {
        "id": str(row["task_id"]),
        "prompt": str(row["prompt"]),
        "entry_point": str(row["entry_point"]),
        "test": str(row["test"]),
        "solution": str(row["canonical_solution"]),
    }


@dataclass(frozen=True)
class HubDataset:
    """A public dataset marft knows.

    Attributes:
        path: its name on the Hugging Face Hub.
        configs: the configs that share its row format; the first is used when ``data`` names none.
        splits: its splits; ``default_split`` is used when ``env.kwargs.split`` is not set.
        licence: its licence, as its card states it.
        convert: one of its rows to a marft row (raises ``KeyError``/``ValueError`` on a bad row).
    """

    path: str
    configs: tuple[str, ...]
    splits: tuple[str, ...]
    default_split: str
    licence: str
    convert: Callable[[Mapping[str, Any]], Row]


CATALOGUE: tuple[HubDataset, ...] = (
    HubDataset("openai/gsm8k", ("main", "socratic"), ("train", "test"), "train", "MIT", gsm8k_row),
    HubDataset(
        "DigitalLearningGmbH/MATH-lighteval",
        (
            "default",
            "algebra",
            "counting_and_probability",
            "geometry",
            "intermediate_algebra",
            "number_theory",
            "prealgebra",
            "precalculus",
        ),
        ("train", "test"),
        "train",
        "MIT",
        math_row,
    ),
    HubDataset("HuggingFaceH4/MATH-500", ("default",), ("test",), "test", "MIT", math_row),
    HubDataset(
        "google-research-datasets/mbpp",
        ("full", "sanitized"),
        ("train", "test", "validation", "prompt"),
        "train",
        "CC-BY-4.0",
        mbpp_row,
    ),
    HubDataset("openai/openai_humaneval", ("openai_humaneval",), ("test",), "test", "MIT", humaneval_row),
)
"""The public datasets whose rows arrive in marft's format."""


@dataclass(frozen=True)
class HubSpec:
    """``hf:NAME[:CONFIG]`` parsed, with the catalogue entry when marft knows the dataset."""

    name: str
    config: str | None
    known: HubDataset | None

    @classmethod
    def parse(cls, data: str) -> HubSpec:
        name, _, config = data.removeprefix("hf:").partition(":")
        matches = [d for d in CATALOGUE if d.path == name and (not config or config in d.configs)]
        known = matches[0] if matches else None
        if known is not None and not config:
            config = known.configs[0]
        return cls(name, config or None, known)

    def split(self, split: str | None) -> str:
        """``split``, or the dataset's default split (``train`` for one marft does not know).

        Raises:
            ConfigError: (``env.kwargs.split``) a split the known dataset does not have.
        """
        if self.known is None:
            return split or "train"
        if split is None:
            return self.known.default_split
        if split not in self.known.splits:
            raise ConfigError(
                "env.kwargs.split",
                f"{self.name} has the splits {', '.join(self.known.splits)}, not {split!r}",
            )
        return split


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's endpoint (``HF_ENDPOINT``) opens within ``timeout``.

    Behind an HTTP(S) proxy a direct connection says nothing, so this answers True there and lets
    ``datasets`` try.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _offline() -> Iterator[None]:
    """``datasets`` and ``huggingface_hub`` in offline mode: the cache answers at once, without the
    retries (about 25 s) they spend on an unreachable hub."""
    import datasets.config
    from huggingface_hub import constants

    saved_datasets = datasets.config.HF_HUB_OFFLINE
    saved_hub = constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved_datasets
        constants.HF_HUB_OFFLINE = saved_hub


def load_hub_rows(
    data: str, split: str | None, data_files: tuple[str, ...], local_format: str
) -> list[tuple[int, Row]]:
    """``(row number, row)`` of every row of Hugging Face dataset ``data`` (``hf:NAME[:CONFIG]``),
    in marft's format when the dataset is in :data:`CATALOGUE`.

    ``local_format`` describes the JSONL rows an env reads and where its docs are, for the message
    that offers a local file instead.

    Raises:
        ConfigError: (key ``env.kwargs.data``, one line) when the hub cannot be reached and the
            dataset is not cached (with ``--set env.kwargs.data=PATH`` to use instead); when the
            dataset, config or split does not exist; on a row the catalogue cannot convert.
    """
    import datasets

    spec = HubSpec.parse(data)
    chosen = spec.split(split)
    kw = {"data_files": list(data_files)} if data_files else {}
    what = f"{spec.name} (" + (f"config {spec.config}, " if spec.config else "") + f"split {chosen})"
    local = f"a local JSONL file instead: --set env.kwargs.data=PATH ({local_format})"
    offline = None if data_files else _offline_reason()  # local files need no hub
    try:
        with _offline() if offline is not None else nullcontext():
            loaded = datasets.load_dataset(spec.name, spec.config, split=chosen, **kw)
    except ConnectionError as e:
        cause = offline or f"{type(e).__name__}: {_first_line(e)}"
        raise ConfigError(
            "env.kwargs.data",
            f"cannot load dataset {what}: the Hugging Face Hub could not be reached ({cause}) and the "
            f"dataset is not cached; use {local}",
        ) from None
    except Exception as e:  # noqa: BLE001 (a missing dataset, config or split: one message)
        raise ConfigError(
            "env.kwargs.data",
            f"cannot load dataset {what} ({type(e).__name__}: {_first_line(e)}); check the name, "
            f"config and split, or use {local}",
        ) from None
    if spec.known is None:
        return [(n, dict(row)) for n, row in enumerate(loaded, 1)]
    rows = []
    for n, row in enumerate(loaded, 1):
        try:
            rows.append((n, spec.known.convert(row)))
        except (KeyError, ValueError) as e:
            raise ConfigError(
                "env.kwargs.data", f"{data} row {n} is not in {spec.name}'s format ({type(e).__name__}: {e})"
            ) from None
    return rows


def _offline_reason() -> str | None:
    """Why the hub is not to be asked (``HF_HUB_OFFLINE`` set, no connection), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        from huggingface_hub import constants

        return f"no connection to {constants.ENDPOINT}"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""
