"""Who acts next: the schedule of one team step in one env copy.

Flex-MG agents are asynchronous: an agent acts once its inputs exist. A schedule says, for an env
copy and the outputs its agents have produced so far in this step, which agents act next; the
collector asks every active env copy and generates all ready (env copy, agent) pairs in one batch,
one adapter per row. The step is over when no agent is ready.

:class:`StaticSchedule` is the fixed dependency graph (an agent acts once every agent it observes
has acted: the graph's levels, in order). A schedule that routes (a router agent's choice, or the
env naming the next agents) plugs in here with the same method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from marft.team.graph import Agent, TeamGraph


class Schedule(Protocol):
    """Decides who acts next in each env copy within a team step."""

    def ready(self, env: int, acted: Mapping[str, str]) -> list[Agent]:
        """The agents of env copy ``env`` that act next, in acting order, given the outputs (by
        role) of the agents that already acted in this step; empty when the step is complete."""
        ...


class StaticSchedule:
    """The static Flex-MG dependency graph: ready = not yet acted, and everything it observes has."""

    def __init__(self, graph: TeamGraph) -> None:
        self.graph = graph
        self._memo: dict[frozenset[str], list[Agent]] = {}  # who is ready depends only on who acted

    def ready(self, env: int, acted: Mapping[str, str]) -> list[Agent]:
        key = frozenset(acted)
        if key not in self._memo:
            self._memo[key] = [
                a for a in self.graph.agents if a.role not in key and all(r in key for r in a.observes)
            ]
        return self._memo[key]
