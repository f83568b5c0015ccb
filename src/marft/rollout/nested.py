"""Nested (tree) groups: the env copies of a group branch at each depth of the team's graph
(``algorithm.group_baseline: nested``, ``algorithm.branching``).

With branching ``[k_0, k_1, ..., k_{D-1}]`` a group of ``G = k_0 k_1 ... k_{D-1}`` env copies shares
one task instance. At depth ``d`` the copies fall into blocks of ``s_d = k_{d+1} ... k_{D-1}``
consecutive copies: the first copy of a block (its *leader*) generates the agent's action and the
others take that action as theirs, so every block holds one depth-``d`` action and, below it, a
subtree of ``s_d`` continuations. Two agents at depth 0 and 1 with branching ``[K, M]``: ``K``
plans per problem, ``M`` answers per plan.

Only leaders generate (the copies of an action are not sampled, not trained and not counted as
generated tokens); their siblings' rows of the next depth are rows of one batched generation.
Branching applies to the first step of an episode (``env.horizon: 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class NestedGroups:
    """Which env copy generates each depth's action in a group.

    Attributes:
        branching: ``[D]`` the branching factor of each depth (their product is ``group_size``).
        env_offset: the global index of the collector's first env copy (a rollout worker's slice
            starts at a group boundary).
    """

    branching: tuple[int, ...]
    env_offset: int = 0

    @property
    def group_size(self) -> int:
        return math.prod(self.branching)

    def block(self, depth: int) -> int:
        """``s_d``: how many consecutive env copies share one action of depth ``depth``."""
        return math.prod(self.branching[depth + 1 :])

    def leader(self, b: int, depth: int) -> int:
        """The env copy (local index) whose depth-``depth`` action env copy ``b`` takes."""
        position = (self.env_offset + b) % self.group_size
        return b - position % self.block(depth)
