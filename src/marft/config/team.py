"""The team's sections: agents, how they see each other, and (optionally) dynamic routing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from marft.config.errors import ConfigError, _check

DONE = "done"
"""The route that ends the step (a router's choice; nobody acts after it)."""
RANDOM = "random"
"""As ``default_route``: a route drawn uniformly from the router's routes."""


@dataclass
class AgentConfig:
    """One member of the team: a role, a prompt and a LoRA adapter of its own."""

    role: str
    """Unique name; also the adapter's name and its checkpoint folder."""
    system_prompt: str = ""
    """The role prompt, sent as the system message through the tokenizer's chat template."""
    observes: list[str] | None = None
    """Roles whose outputs this agent sees (the Flex-MG dependency function D). Default: every
    agent declared before it (with ``team.routing``: none beyond its route). ``[]`` means it sees
    only the environment."""
    trainable: bool = True
    """Whether RL updates this agent's adapter (false: it keeps its adapter as loaded, while the
    others train: freeze a role)."""
    lr: float | None = None
    """This agent's adapter's learning rate (None: ``algorithm.policy_lr``): train one role more
    gently than another. Agents that share an adapter (``lora.shared``) must agree."""
    kl_coef: float | None = None
    """This agent's KL coefficient to the reference (None: ``algorithm.kl_coef``): hold one role
    near the base while the others move. Agents that share an adapter must agree."""
    base: str | None = None
    """The base model this agent's adapter sits on: a name under ``models`` (None: the first
    base). Agents on one base share it and generate together; different bases may have different
    tokenizers (agents see each other's messages as text)."""
    graded: bool = False
    """Whether the environment grades this agent's output (envs that grade read this)."""
    max_new_tokens: int | None = None
    """This agent's longest action in tokens (None: ``sampling.max_new_tokens``)."""
    routes: list[str] | dict[str, str] | None = None
    """Routing teams only: this agent is a router; its output chooses one of these (roles, or
    ``done``) to act next (``team.routing.choice_pattern``). A mapping ``{word: role or done}``
    routes by words of your choosing, several words to one target allowed (e.g.
    ``{answer: done, help: solver}``)."""
    default_route: str = DONE
    """A router's choice when its output names none of its routes (counted as ``route_invalid``):
    a role, ``done``, or ``random`` (a route drawn uniformly: invalid outputs still explore)."""
    route_by: Literal["output", "uniform"] = "output"
    """``uniform``: the router's choice is drawn uniformly from its routes, whatever it writes (the
    random-router baseline)."""
    next: list[str] = field(default_factory=list)
    """Routing teams only, not for routers: the agents that act after this one (none: the step
    ends after it, once no other agent is pending)."""

    def __post_init__(self) -> None:
        _check(
            bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", self.role))
            and self.role not in ("default", DONE, RANDOM)
            and self.role not in "lora_",  # PEFT mistakes such adapter names for its own prefix
            "role",
            "must be an identifier (letters, digits, _; not 'default', 'done', 'random' nor part of "
            "'lora_'), "
            f"got {self.role!r}",
        )
        _check(
            self.max_new_tokens is None or self.max_new_tokens > 0,
            "max_new_tokens",
            "must be a positive integer or null",
        )
        _check(self.routes is None or len(self.routes) > 0, "routes", "a router needs at least one route")
        words = self.routes or ()
        _check(
            all(isinstance(w, str) and w.strip() for w in words),
            "routes",
            "route words must be non-empty text",
        )
        if isinstance(self.routes, dict):
            _check(
                all(isinstance(t, str) for t in self.routes.values()),
                "routes",
                "each word maps to a role or done",
            )
        _check(self.lr is None or self.lr > 0, "lr", "must be > 0 or null (algorithm.policy_lr)")
        _check(
            self.kl_coef is None or self.kl_coef >= 0, "kl_coef", "must be >= 0 or null (algorithm.kl_coef)"
        )
        _check(not (self.routes and self.next), "next", "a router chooses who acts next: give routes or next")
        _check(
            self.route_by == "output" or bool(self.routes), "route_by", "only a router (with routes) has one"
        )


@dataclass
class RoutingConfig:
    """Dynamic routing (Flex-MG with a dependency function that changes as the team works).

    In each team step the ``start`` agents act first (or the agents the env's observation names,
    ``Observation.next_agents``); after an agent acts, its router choice or its ``next`` agents act;
    the step ends when nobody is pending (or at ``max_actions``). Agents pending at the same time
    act in one batched generation.
    """

    start: list[str] = field(default_factory=list)
    """The agents that act first in each step, unless the env's observation names them
    (``Observation.next_agents``)."""
    max_actions: int = 8
    """The most actions of one env copy in one step; the route is cut there (``route_cut``)."""
    choice_pattern: str = r"\b{routes}\b"
    """How a router's choice is read from its output: a regular expression (case-insensitive) in
    which ``{routes}`` stands for the router's route words as alternatives; the word it matches
    is the choice, and the first match counts. The default takes the first route named anywhere
    in the output; ``"^\\W*{routes}\\b"`` demands it first, ``"ROUTE:\\s*{routes}"`` a tag."""

    def __post_init__(self) -> None:
        _check(self.max_actions > 0, "max_actions", "must be a positive integer")
        _check(len(self.start) > 0, "start", "name the agents that act first in each step")
        _check(self.choice_pattern.count("{routes}") == 1, "choice_pattern", "must contain {routes} once")
        try:
            re.compile(self.choice_pattern.replace("{routes}", "(?P<route>a|b)"))
        except re.error as e:
            raise ConfigError("choice_pattern", f"is not a regular expression ({e})") from None


@dataclass
class TeamConfig:
    """The LaMAS: agents in declaration order and how they see each other."""

    agents: list[AgentConfig] = field(default_factory=list)
    """The agents. Acting order is a topological order of the dependency graph."""
    message_format: str = "{role}: {content}"
    """How an observed agent's output is quoted in a prompt; fields ``{role}`` and ``{content}``."""
    routing: RoutingConfig | None = None
    """Dynamic routing (``docs/team.md``); null: the static dependency graph of ``observes``."""

    def __post_init__(self) -> None:
        _check(len(self.agents) > 0, "agents", "the team needs at least one agent")
        try:
            self.message_format.format(role="r", content="c")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError("message_format", f"only {{role}} and {{content}} may be used ({e})") from None
