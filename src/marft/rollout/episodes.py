"""The episode running in each env copy of a collector: its current observation, the team's
return and steps so far, and (for the copies whose transcripts are kept) its turns. Episodes
carry over between collection calls in continuing mode, and into checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from marft.envs.base import Observation, StepResult
from marft.team.schedule import Step, route_of


@dataclass
class TeamStep:
    """One env copy's team step in the collector.

    Attributes:
        step: the schedule's step (who acted, what they said).
        end: the index of the trajectory's step axis where the team step ends (so far).
        kept: the prompts of its actions, when its transcript is kept (else None).
        slots: the ``(step index, agent)`` of each of its actions, in the order they happened.
        copied: positions in ``step.actions`` of actions taken from another env copy (nested
            groups' block leader): they hold no slot.
    """

    step: Step
    end: int
    kept: list | None = None
    slots: list[tuple[int, int]] = field(default_factory=list)
    copied: set[int] = field(default_factory=set)


def transcript_step(
    step_no: int, act: TeamStep, rewards: list[float], team_reward: float, result: StepResult, routed: bool
) -> dict[str, Any]:
    """A transcript's record of team step ``step_no`` of an episode: each action's prompt,
    response and reward; the team's reward, the env's verdict, and the route of a routing team."""
    record = {
        "step": step_no,
        "agents": [
            {"role": a.role, "messages": msgs, "response": a.text, "reward": r}
            for a, msgs, r in zip(act.step.actions, act.kept, rewards, strict=True)
        ],
        "reward": team_reward,
        "correct": result.correct,
        "answer": result.answer,
        "info": result.info,
    }
    if routed:
        record["route"] = route_of(act.step)
    return record


@dataclass
class LiveEpisodes:
    """Per env copy, the live episode.

    Attributes:
        observations: what each copy's team sees next.
        returns: the team's return so far.
        lengths: team steps taken so far.
        turns: the transcript's steps so far (empty for copies whose transcripts are not kept).
    """

    observations: list[Observation]
    returns: list[float]
    lengths: list[int]
    turns: list[list[dict[str, Any]]]

    @classmethod
    def start(cls, observations: list[Observation]) -> LiveEpisodes:
        """New episodes on these first observations."""
        n = len(observations)
        return cls(list(observations), [0.0] * n, [0] * n, [[] for _ in range(n)])

    def restart(self, b: int, observation: Observation | None = None) -> None:
        """Env copy b starts a new episode (on ``observation``, when it is already known)."""
        if observation is not None:
            self.observations[b] = observation
        self.returns[b] = 0.0
        self.lengths[b] = 0
        self.turns[b] = []

    def add_step(self, b: int, team_reward: float, turn: dict[str, Any] | None) -> None:
        """Env copy b took a team step worth ``team_reward`` (its transcript step, if kept)."""
        self.returns[b] += team_reward
        self.lengths[b] += 1
        if turn is not None:
            self.turns[b].append(turn)

    def state_dict(self) -> dict[str, Any]:
        """Lists over env copies, under the collector checkpoint's keys."""
        return {
            "obs": self.observations,
            "ep_return": self.returns,
            "ep_len": self.lengths,
            "ep_turns": self.turns,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.observations = list(state["obs"])
        self.returns = list(state["ep_return"])
        self.lengths = list(state["ep_len"])
        self.turns = list(state["ep_turns"])
