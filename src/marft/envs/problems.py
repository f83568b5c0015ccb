"""What every problem-set env shares: a seeded draw of the problem, attempts with feedback, the
graded roles, and exact resume."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from marft.envs.base import Observation


def missing_graded(team, who: str) -> tuple[str, str] | None:
    """``check_team``'s error when no agent of ``team`` is graded (``who``: the agent that should
    be, in words), else None."""
    if any(a.graded for a in team.agents):
        return None
    roles = ", ".join(a.role for a in team.agents)
    return "team.agents", f"no agent is graded; set graded: true on {who} (roles: {roles})"


class ProblemEpisodes:
    """Episode mechanics of an env over a problem list (``self.problems``): ``reset(seed)`` draws a
    problem with that seed (copies reset with one seed, a group, get one problem), ``reset_to``
    starts a given one (evaluation walks the list so), ``attempt`` and ``history`` (the feedback
    shown on the next attempt) follow the episode, and ``state_dict`` holds all of it but the
    problems, which reload from the config. Subclasses set ``problems`` and define ``_observe``."""

    problems: Sequence[Any]

    def __init__(self) -> None:
        self.graded_roles: list[str] = []
        self._rng = random.Random(0)
        self.index = 0
        self.attempt = 0
        self.history: list[str] = []

    def _observe(self) -> Observation:
        raise NotImplementedError

    def bind_team(self, graph) -> None:
        """Learn which roles are graded (called by the engine with the team's graph)."""
        self.graded_roles = [a.role for a in graph.agents if a.graded]

    def state_dict(self) -> dict:
        """The sampling RNG and the current episode (not the problems: they reload from ``data``)."""
        return {
            "rng": self._rng.getstate(),
            "index": self.index,
            "attempt": self.attempt,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        self._rng.setstate(state["rng"])
        self.index, self.attempt, self.history = state["index"], state["attempt"], list(state["history"])

    def reset(self, seed: int | None = None) -> Observation:
        if seed is not None:
            self._rng = random.Random(seed)
        return self.reset_to(self._rng.randrange(len(self.problems)))

    def reset_to(self, index: int) -> Observation:
        """Start an episode on problem ``index`` (evaluation walks the dataset this way)."""
        self.index, self.attempt, self.history = index, 0, []
        return self._observe()
