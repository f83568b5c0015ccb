"""A custom environment, found by ``env.name: examples.guess_env:GuessEnv``.

The team must name a number hidden in the prompt; the grader rewards each agent separately, so
this env also shows ``reward_assignment: per_agent``. Run it with::

    marft train examples/guess_team.yaml

(from the repository root, so that ``examples`` is importable).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from marft.envs import Observation, StepResult


@dataclass
class GuessConfig:
    """``env.kwargs`` of :class:`GuessEnv`; unknown keys are refused like any other config key."""

    numbers: list[str] = field(default_factory=lambda: ["one", "two", "three"])
    """Words the hidden number is drawn from."""


class GuessEnv:
    Config = GuessConfig

    def __init__(self, config: GuessConfig) -> None:
        self.cfg = config
        self.rng = random.Random(0)
        self.target = self.cfg.numbers[0]

    def vocabulary(self) -> list[str]:
        """Optional: words the built-in tiny tokenizer must know."""
        return [*self.cfg.numbers, "the number is"]

    def reset(self, seed: int | None = None) -> Observation:
        if seed is not None:
            self.rng = random.Random(seed)
        self.target = self.rng.choice(self.cfg.numbers)
        return Observation(text=f"the number is {self.target}")

    def step(self, actions):
        rewards = {role: float(self.target in text.split()) for role, text in actions.items()}
        return StepResult(observation=self.reset(), rewards=rewards, done=True, info={"target": self.target})
