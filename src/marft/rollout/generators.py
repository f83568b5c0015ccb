"""The team's generation, base by base: each base's tokenizer and generation backend, and the
base of each agent (a team of one base has one entry).

Rows of one turn are split by base (:meth:`Generators.split`): each base's rows are one batched
call on that base, with that base's chat template and tokenizer; agents see each other's
messages as text, so bases with different vocabularies work together. As a
:class:`~marft.rollout.backends.WeightSync`, the set hands each update to every base's backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from marft.rollout.backends import AdapterWeights, GenerationBackend
from marft.team.graph import Agent

Row = TypeVar("Row")


@dataclass(frozen=True)
class BaseGeneration:
    """One base's generation: its tokenizer (chat template, left padding) and backend."""

    tokenizer: Any
    backend: GenerationBackend


class Generators:
    """Every base's generation, and each agent's base.

    Args:
        per_base: base name -> its generation (in the order of the config's ``models``).
        base_of: agent -> its base's name.
    """

    def __init__(self, per_base: Mapping[str, BaseGeneration], base_of: Mapping[str, str]) -> None:
        self.per_base = dict(per_base)
        self.base_of = dict(base_of)
        self.bases = list(self.per_base)

    @classmethod
    def single(cls, tokenizer, backend: GenerationBackend, roles: Sequence[str]) -> Generators:
        """A team of one base."""
        return cls({"base": BaseGeneration(tokenizer, backend)}, dict.fromkeys(roles, "base"))

    def of(self, role: str) -> BaseGeneration:
        """Agent ``role``'s base's generation."""
        return self.per_base[self.base_of[role]]

    def split(self, rows: list[tuple[Agent, Row]]) -> list[tuple[str, list[tuple[Agent, Row]]]]:
        """``(agent, x)`` rows grouped by base (bases in order, rows in their order): one
        generation call each."""
        groups: dict[str, list[tuple[Agent, Row]]] = {b: [] for b in self.bases}
        for row in rows:
            groups[self.base_of[row[0].role]].append(row)
        return [(b, rs) for b, rs in groups.items() if rs]

    # ------------------------------------------------------------------------------ WeightSync

    @property
    def shares_weights(self) -> bool:
        return all(g.backend.shares_weights for g in self.per_base.values())

    @property
    def device(self) -> torch.device:
        """The first base's backend's device."""
        return self.per_base[self.bases[0]].backend.device

    def update_weights(
        self, version: int, weights: Callable[..., AdapterWeights], changed: Sequence[str] | None = None
    ) -> None:
        """Each base's backend gets the update of the agents on it."""
        for name, gen in self.per_base.items():
            own = None if changed is None else [r for r in changed if self.base_of.get(r, name) == name]
            gen.backend.update_weights(version, weights, own)

    def release(self) -> None:
        for gen in self.per_base.values():
            gen.backend.release()
