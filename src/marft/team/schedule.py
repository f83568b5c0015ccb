"""Who acts next: the schedule of one team step in one env copy.

Flex-MG agents are asynchronous: an agent acts once its inputs exist. At the start of a team step
the collector asks the schedule for a :class:`Step` per env copy; then, turn after turn, every
active copy's step says which agents are ready (:meth:`Step.ready`), all ready (env copy, agent)
pairs are generated in one batch (one adapter per row), and each output is recorded
(:meth:`Step.record`). The step is over when no agent is ready; the env then steps on the outputs.

* :class:`StaticSchedule`: the fixed dependency graph. An agent acts once every agent it observes
  has acted (the graph's levels, in order) and sees their outputs.
* :class:`RoutedSchedule` (``team.routing``): who acts next depends on the episode. The step starts
  with ``team.routing.start`` or with the agents the env's observation names
  (``Observation.next_agents``: env routing); after an agent acts, a router's choice
  (``routes``, read from its output with ``team.routing.choice_pattern``) or its ``next`` agents
  act. An agent sees the outputs of the actions it was routed after in this step (its ancestors on
  the route: its own earlier actions too, when the route came back through them) and of the roles
  it ``observes`` that acted before it.
  An agent may act several times in a step (a verifier that sends work back).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Protocol

from marft.config import DONE, RANDOM
from marft.envs.base import Observation
from marft.team.graph import Agent, TeamGraph


@dataclass
class Action:
    """One action of a step: who acted, what it wrote, and the actions that routed to it."""

    role: str
    text: str
    parents: tuple[int, ...] = ()
    turn: int = 0


class Step(Protocol):
    """One env copy's team step as it unfolds."""

    actions: list[Action]
    """Every action so far, in acting order (an agent may appear more than once)."""

    def ready(self) -> list[Agent]:
        """The agents that act in the next turn, in acting order; empty when the step is over."""
        ...

    def seen(self, agent: Agent) -> list[tuple[str, str]]:
        """``(role, output)`` pairs ``agent`` sees when it acts now (routed: in acting order;
        static: in the order of its ``observes``)."""
        ...

    def record(self, agent: Agent, text: str) -> None:
        """``agent`` (one of those :meth:`ready` returned) wrote ``text``."""
        ...


class Schedule(Protocol):
    """Makes the :class:`Step` of each env copy."""

    def begin(self, env: int, observation: Observation, rng: random.Random) -> Step:
        """A new team step of env copy ``env`` on ``observation``; ``rng`` is that copy's stream
        (random routers draw from it, so runs repeat)."""
        ...


def outputs_of(step: Step) -> dict[str, str]:
    """What the env steps on: each acting role's last output, in the order of their last actions."""
    out: dict[str, str] = {}
    for a in step.actions:
        out.pop(a.role, None)
        out[a.role] = a.text
    return out


def route_of(step: Step) -> str:
    """The route taken, e.g. ``lead>solver>verifier>lead`` (agents of one turn joined by ``+``)."""
    turns: dict[int, list[str]] = {}
    for a in step.actions:
        turns.setdefault(a.turn, []).append(a.role)
    return ">".join("+".join(roles) for _, roles in sorted(turns.items())) or "(none)"


class StaticSchedule:
    """The static Flex-MG dependency graph: ready = not yet acted, and everything it observes has."""

    def __init__(self, graph: TeamGraph) -> None:
        self.graph = graph
        self._memo: dict[frozenset[str], list[Agent]] = {}  # who is ready depends only on who acted

    def begin(self, env: int, observation: Observation, rng: random.Random) -> _StaticStep:
        if observation.next_agents is not None:
            raise ValueError(
                "the env named the next agents (Observation.next_agents) but the team has a static "
                "graph; set team.routing to let the env route (docs/team.md)"
            )
        return _StaticStep(self)

    def ready_after(self, acted: frozenset[str]) -> list[Agent]:
        if acted not in self._memo:
            self._memo[acted] = [
                a for a in self.graph.agents if a.role not in acted and all(r in acted for r in a.observes)
            ]
        return self._memo[acted]


@dataclass
class _StaticStep:
    schedule: StaticSchedule
    actions: list[Action] = field(default_factory=list)
    _outputs: dict[str, str] = field(default_factory=dict)
    _turn: int = -1

    def ready(self) -> list[Agent]:
        self._turn += 1
        return self.schedule.ready_after(frozenset(self._outputs))

    def seen(self, agent: Agent) -> list[tuple[str, str]]:
        return [(r, self._outputs[r]) for r in agent.observes if r in self._outputs]

    def record(self, agent: Agent, text: str) -> None:
        self._outputs[agent.role] = text
        self.actions.append(Action(agent.role, text, turn=self._turn))


class RoutedSchedule:
    """Dynamic routing (``team.routing``): routers' choices, ``next`` agents and env routing.

    Counters (read and reset by the collector): ``invalid`` router outputs that named no route
    (the router's ``default_route`` was taken), ``router_actions``, and ``cut`` steps that reached
    ``team.routing.max_actions``.
    """

    def __init__(self, graph: TeamGraph) -> None:
        if graph.routing is None:
            raise ValueError("RoutedSchedule needs a team with team.routing")
        self.graph, self.routing = graph, graph.routing
        self._by_role = {a.role: a for a in graph.agents}
        self._patterns = {
            a.role: re.compile(
                self.routing.choice_pattern.replace(
                    "{routes}", "(?P<route>" + "|".join(re.escape(w) for w, _ in a.route_words) + ")"
                ),
                re.IGNORECASE,
            )
            for a in graph.agents
            if a.routes
        }

    def agent(self, role: str) -> Agent:
        return self._by_role[role]

    def begin(self, env: int, observation: Observation, rng: random.Random) -> _RoutedStep:
        start = observation.next_agents if observation.next_agents is not None else self.routing.start
        if not start:
            raise ValueError("the env named no agent to act next (Observation.next_agents is empty)")
        unknown = [r for r in start if r not in self._by_role]
        if unknown:
            raise ValueError(
                f"the env named unknown agents {unknown} to act next; roles: {', '.join(self._by_role)}"
            )
        step = _RoutedStep(self, rng)
        step.upcoming = [(r, ()) for r in start]
        return step

    def choose(self, agent: Agent, text: str, rng: random.Random) -> tuple[str, bool]:
        """A router's choice from its output: ``(route, valid)``."""
        if agent.route_by == "uniform":
            return rng.choice(agent.routes), True
        match = self._patterns[agent.role].search(text)
        if match is None:
            return (rng.choice(agent.routes) if agent.default_route == RANDOM else agent.default_route), False
        chosen = match.group("route").lower()
        return next(r for w, r in agent.route_words if w.lower() == chosen), True


@dataclass
class _RoutedStep:
    schedule: RoutedSchedule
    rng: random.Random
    actions: list[Action] = field(default_factory=list)
    upcoming: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    pending: dict[str, tuple[int, ...]] = field(default_factory=dict)
    invalid: int = 0
    router_actions: int = 0
    cut: bool = False
    _turn: int = -1

    def ready(self) -> list[Agent]:
        self._turn += 1
        self.pending = {}
        for role, parents in self.upcoming:  # an agent routed to by several actions acts once
            self.pending[role] = tuple(sorted(set(self.pending.get(role, ()) + parents)))
        self.upcoming = []
        agents = sorted((self.schedule.agent(r) for r in self.pending), key=lambda a: a.index)
        room = self.schedule.routing.max_actions - len(self.actions)
        if len(agents) > room:
            self.cut = True
            agents = agents[: max(room, 0)]
        return agents

    def seen(self, agent: Agent) -> list[tuple[str, str]]:
        keep = set()
        stack = list(self.pending.get(agent.role, ()))
        while stack:  # ancestors on the route
            i = stack.pop()
            if i not in keep:
                keep.add(i)
                stack.extend(self.actions[i].parents)
        keep.update(i for i, a in enumerate(self.actions) if a.role in agent.observes)
        return [(self.actions[i].role, self.actions[i].text) for i in sorted(keep)]

    def record(self, agent: Agent, text: str) -> None:
        me = len(self.actions)
        self.actions.append(Action(agent.role, text, self.pending.get(agent.role, ()), self._turn))
        if agent.routes:
            self.router_actions += 1
            choice, valid = self.schedule.choose(agent, text, self.rng)
            self.invalid += not valid
            successors: tuple[str, ...] = () if choice == DONE else (choice,)
        else:
            successors = agent.next
        self.upcoming.extend((r, (me,)) for r in successors)


def schedule_for(graph: TeamGraph) -> StaticSchedule | RoutedSchedule:
    """The team's schedule: routed with ``team.routing``, else the static graph."""
    return RoutedSchedule(graph) if graph.routing is not None else StaticSchedule(graph)
