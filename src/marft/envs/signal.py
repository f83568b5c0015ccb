"""The demo env: a referential (signalling) game that needs real coordination.

One agent (``informed_role``) privately sees a secret symbol; another (``answer_role``) must name
it. The answerer never sees the secret, so the team can beat chance (1 / number of symbols) only if
the informed agent encodes the secret in its message and the answerer reads that message: remove
the dependency from the graph and the return stays at chance. Every symbol, prompt word and
message is a word of the tiny model's vocabulary, so a randomly initialised model learns it from
scratch in a couple of minutes on CPU.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from marft.envs.base import ENVS, Observation, StepResult


@dataclass
class SignalConfig:
    """Arguments of :class:`SignalEnv` (``env.kwargs``)."""

    symbols: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow"])
    """The secrets; chance is 1 / len(symbols)."""
    informed_role: str = "speaker"
    """Role that sees the secret."""
    answer_role: str = "listener"
    """Role whose output is graded: its first word that is a symbol must be the secret. The same
    role as ``informed_role`` gives a single-agent baseline with nothing to coordinate."""
    rounds: int = 1
    """Secrets per episode (each round is one team step with its own reward)."""
    prompt: str = "name the secret colour"
    """Shared observation text."""

    def __post_init__(self) -> None:
        from marft.config import ConfigError

        if len(self.symbols) < 2 or len(set(self.symbols)) != len(self.symbols):
            raise ConfigError("symbols", "needs at least two distinct symbols")
        if any(len(s.split()) != 1 for s in self.symbols):
            raise ConfigError("symbols", "each symbol must be a single word")
        if self.rounds < 1:
            raise ConfigError("rounds", "must be a positive integer")

    @staticmethod
    def check_team(cfg: SignalConfig, team) -> tuple[str, str] | None:
        roles = [a.role for a in team.agents]
        for key in ("informed_role", "answer_role"):
            if getattr(cfg, key) not in roles:
                return (
                    f"env.kwargs.{key}",
                    f"role {getattr(cfg, key)!r} is not in the team; roles: {', '.join(roles)}",
                )
        return None


@ENVS.register("signal")
class SignalEnv:
    """Referential game: the informed agent signals, the answerer names the secret."""

    Config = SignalConfig

    def __init__(self, config: SignalConfig | None = None) -> None:
        self.cfg = config or SignalConfig()
        self._rng = random.Random(0)
        self._secret = self.cfg.symbols[0]
        self._round = 0

    def _observe(self) -> Observation:
        self._secret = self._rng.choice(self.cfg.symbols)
        return Observation(text=self.cfg.prompt, private={self.cfg.informed_role: f"secret {self._secret}"})

    def task_observation(self, task: str) -> Observation:
        """The game with the user's text as what the informed agent privately sees (``secret red``,
        say)."""
        return Observation(text=self.cfg.prompt, private={self.cfg.informed_role: task})

    def reset(self, seed: int | None = None) -> Observation:
        if seed is not None:
            self._rng = random.Random(seed)
        self._round = 0
        return self._observe()

    def vocabulary(self) -> list[str]:
        """Every word this env may show or expect (the tiny tokenizer is trained to cover them)."""
        return [*self.cfg.symbols, self.cfg.prompt, "secret"]

    def answer_of(self, text: str) -> str | None:
        """The first word of ``text`` that is a symbol (None if there is none)."""
        symbols = set(self.cfg.symbols)
        return next((w for w in text.lower().split() if w in symbols), None)

    def step(self, actions: Mapping[str, str]) -> StepResult:
        answer = self.answer_of(actions[self.cfg.answer_role])
        reward = float(answer == self._secret)
        info = {"secret": self._secret, "answer": answer}
        self._round += 1
        done = self._round >= self.cfg.rounds
        return StepResult(observation=self._observe(), rewards=reward, done=done, info=info, answer=answer)
