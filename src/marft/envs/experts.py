"""The routing demo env: tasks of several kinds, each answerable only by its own expert.

Every task has a kind and a secret symbol. Everyone sees the kind; only the expert of that kind
privately sees the secret, so any other expert can only guess (chance: 1 / number of symbols). A
router sees the kind and routes the task to one expert; the team is right when the last expert
that acted names the secret. The return reaches 1 only if the router learns which expert serves
which kind *and* the experts learn to report what they see; a uniformly random router earns
``1/K * p + (1 - 1/K) / S`` with ``K`` kinds, ``S`` symbols and ``p`` the experts' accuracy. Every
word is in the tiny model's vocabulary, so it learns from scratch on CPU (preset ``routing``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from marft.envs.base import ENVS, Observation, StepResult


@dataclass
class ExpertsConfig:
    """Arguments of :class:`ExpertsEnv` (``env.kwargs``)."""

    experts: dict[str, str] = field(default_factory=lambda: {"sun": "north", "rain": "south", "snow": "east"})
    """Task kind -> the role of its expert (each kind one word)."""
    symbols: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow"])
    """The secrets; an expert of another kind guesses (1 / len(symbols))."""
    prompt: str = "task"
    """Shared observation text, followed by the kind."""

    def __post_init__(self) -> None:
        from marft.config import ConfigError

        if len(self.experts) < 2:
            raise ConfigError("experts", "needs at least two kinds, each mapped to an expert role")
        if len(set(self.experts.values())) != len(self.experts):
            raise ConfigError("experts", "each kind needs its own expert role")
        if len(self.symbols) < 2 or len(set(self.symbols)) != len(self.symbols):
            raise ConfigError("symbols", "needs at least two distinct symbols")
        if any(len(w.split()) != 1 for w in [*self.experts, *self.symbols]):
            raise ConfigError("experts", "kinds and symbols must be single words")

    @staticmethod
    def check_team(cfg: ExpertsConfig, team) -> tuple[str, str] | None:
        roles = [a.role for a in team.agents]
        for kind, role in cfg.experts.items():
            if role not in roles:
                return (
                    f"env.kwargs.experts.{kind}",
                    f"role {role!r} is not in the team; roles: {', '.join(roles)}",
                )
        return None


@ENVS.register("experts")
class ExpertsEnv:
    """Route each task to the expert of its kind; the expert names the secret it alone sees."""

    Config = ExpertsConfig

    def __init__(self, config: ExpertsConfig | None = None) -> None:
        self.cfg = config or ExpertsConfig()
        self._rng = random.Random(0)
        self.kind, self.secret = next(iter(self.cfg.experts)), self.cfg.symbols[0]

    def reset(self, seed: int | None = None) -> Observation:
        if seed is not None:
            self._rng = random.Random(seed)
        self.kind = self._rng.choice(list(self.cfg.experts))
        self.secret = self._rng.choice(self.cfg.symbols)
        return Observation(
            text=f"{self.cfg.prompt} {self.kind}",
            private={self.cfg.experts[self.kind]: f"secret {self.secret}"},
        )

    def vocabulary(self) -> list[str]:
        """Every word this env may show or expect (the tiny tokenizer is trained to cover them)."""
        return [*self.cfg.experts, *self.cfg.experts.values(), *self.cfg.symbols, self.cfg.prompt, "secret"]

    def step(self, actions: Mapping[str, str]) -> StepResult:
        experts = set(self.cfg.experts.values())
        asked = next((r for r in reversed(list(actions)) if r in experts), None)
        words = actions[asked].lower().split() if asked is not None else []
        answer = next((w for w in words if w in self.cfg.symbols), None)
        right = answer == self.secret
        info = {"kind": self.kind, "secret": self.secret, "expert": asked, "answer": answer}
        return StepResult(
            observation=self.reset(), rewards=float(right), done=True, info=info, correct=right, answer=answer
        )
