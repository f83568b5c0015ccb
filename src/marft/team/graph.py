"""The Flex-MG dependency function D as a DAG over roles.

Agent j acts after, and sees the outputs of, the agents it observes (MARFT, Liao et al. 2025,
Sec. 3, "Flex-MG"). Agents whose inputs all exist act together: every agent at the same depth of
the DAG is generated in one batched call, one adapter per row.
"""

from __future__ import annotations

from dataclasses import dataclass

from marft.config import DONE, RANDOM, ConfigError, RoutingConfig, TeamConfig


@dataclass(frozen=True)
class Agent:
    """One agent as the engine sees it (resolved from :class:`marft.config.AgentConfig`)."""

    role: str
    system_prompt: str
    observes: tuple[str, ...]
    trainable: bool
    graded: bool
    depth: int
    index: int
    """Position in acting order (the N axis of ``[B, T, N]`` buffers)."""
    max_new_tokens: int | None = None
    """This agent's longest action (None: the sampling default)."""
    routes: tuple[str, ...] = ()
    """Routing teams: the choices of a router (roles, or ``done``); empty: not a router."""
    route_words: tuple[tuple[str, str], ...] = ()
    """A router's ``(word, choice)`` pairs: the words its output may name (the choices themselves,
    unless the config maps words to choices)."""
    default_route: str = DONE
    """A router's choice when its output names none of ``routes``."""
    route_by: str = "output"
    """``output``: read the choice from the output; ``uniform``: draw it uniformly at random."""
    next: tuple[str, ...] = ()
    """Routing teams: the agents that act after this one (non-routers)."""
    lr: float | None = None
    """This agent's adapter's learning rate (None: ``algorithm.policy_lr``)."""
    kl_coef: float | None = None
    """This agent's KL coefficient (None: ``algorithm.kl_coef``)."""


@dataclass(frozen=True)
class TeamGraph:
    """Agents in acting order plus their grouping by depth.

    Acting order is a topological order of the dependency DAG that keeps declaration order among
    agents of equal depth. It is the order in which agent-wise GAE passes credit.
    """

    agents: tuple[Agent, ...]
    message_format: str = "{role}: {content}"
    routing: RoutingConfig | None = None
    """Dynamic routing; None: the static graph (agents act by depth)."""

    @property
    def roles(self) -> list[str]:
        return [a.role for a in self.agents]

    @property
    def n_agents(self) -> int:
        return len(self.agents)

    @property
    def levels(self) -> list[list[Agent]]:
        """Agents grouped by depth, shallowest first; each group is one batched generation."""
        depth = max(a.depth for a in self.agents)
        return [[a for a in self.agents if a.depth == d] for d in range(depth + 1)]

    def agent(self, role: str) -> Agent:
        for a in self.agents:
            if a.role == role:
                return a
        raise KeyError(f"no agent with role {role!r}; roles: {', '.join(self.roles)}")

    @classmethod
    def from_config(cls, team: TeamConfig) -> TeamGraph:
        """Resolve defaults, check the graph and order it.

        With ``team.routing``, ``observes`` only adds what an agent sees (it does not order the
        agents: routes do), so acting order is declaration order and cycles are allowed.

        Raises:
            ConfigError: on a duplicate role, an unknown observed role, self-observation, a cycle
                (static graphs), or a route to an unknown role.
        """
        declared = [a.role for a in team.agents]
        seen: set[str] = set()
        for i, a in enumerate(team.agents):
            if a.role in seen:
                raise ConfigError(f"team.agents.{i}.role", f"duplicate role {a.role!r}; roles must be unique")
            seen.add(a.role)
        deps: dict[str, tuple[str, ...]] = {}
        for i, a in enumerate(team.agents):
            default = () if team.routing is not None else tuple(declared[:i])
            obs = default if a.observes is None else tuple(a.observes)
            for j, r in enumerate(obs):
                key = f"team.agents.{i}.observes.{j}"
                if r not in seen:
                    raise ConfigError(key, f"unknown role {r!r}; roles: {', '.join(declared)}")
                if r == a.role:
                    raise ConfigError(key, f"agent {r!r} cannot observe itself")
            if len(set(obs)) != len(obs):
                raise ConfigError(f"team.agents.{i}.observes", "lists a role twice")
            deps[a.role] = obs

        _check_routes(team, declared)
        depth = dict.fromkeys(declared, 0) if team.routing is not None else _depths(declared, deps)
        order = sorted(range(len(declared)), key=lambda i: (depth[declared[i]], i))
        agents = tuple(
            Agent(
                role=team.agents[i].role,
                system_prompt=team.agents[i].system_prompt,
                observes=deps[team.agents[i].role],
                trainable=team.agents[i].trainable,
                graded=team.agents[i].graded,
                depth=depth[team.agents[i].role],
                index=k,
                max_new_tokens=team.agents[i].max_new_tokens,
                routes=tuple(dict.fromkeys(_route_words(team.agents[i]).values())),
                route_words=tuple(_route_words(team.agents[i]).items()),
                default_route=team.agents[i].default_route,
                route_by=team.agents[i].route_by,
                next=tuple(team.agents[i].next),
                lr=team.agents[i].lr,
                kl_coef=team.agents[i].kl_coef,
            )
            for k, i in enumerate(order)
        )
        return cls(agents=agents, message_format=team.message_format, routing=team.routing)


def _depths(declared: list[str], deps: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Depth of each role in the static dependency DAG; ConfigError on a cycle."""
    depth: dict[str, int] = {}
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done

    def visit(role: str, stack: list[str]) -> int:
        if state.get(role) == 2:
            return depth[role]
        if state.get(role) == 1:
            cycle = stack[stack.index(role) :] + [role]
            raise ConfigError("team.agents", "the dependency graph has a cycle: " + " -> ".join(cycle))
        state[role] = 1
        d = 1 + max((visit(r, stack + [r]) for r in deps[role]), default=-1)
        state[role] = 2
        depth[role] = d
        return d

    for r in declared:
        visit(r, [r])
    return depth


def _route_words(agent) -> dict[str, str]:
    """A router's words -> choices (a list of routes maps each to itself)."""
    routes = agent.routes or ()
    return dict(routes) if isinstance(routes, dict) else {r: r for r in routes}


def _check_routes(team: TeamConfig, declared: list[str]) -> None:
    """Routes, ``next`` and ``start`` name known roles, and only routing teams have them."""
    if team.routing is None:
        for i, a in enumerate(team.agents):
            for key in ("routes", "next"):
                if getattr(a, key):
                    raise ConfigError(
                        f"team.agents.{i}.{key}",
                        "only a routing team has routes; set team.routing (docs/team.md)",
                    )
        return
    known = ", ".join(declared)
    for j, r in enumerate(team.routing.start):
        if r not in declared:
            raise ConfigError(f"team.routing.start.{j}", f"unknown role {r!r}; roles: {known}")
    for i, a in enumerate(team.agents):
        for j, (word, r) in enumerate(_route_words(a).items()):
            j = word if isinstance(a.routes, dict) else j
            if r not in declared and r != DONE:
                raise ConfigError(
                    f"team.agents.{i}.routes.{j}", f"unknown role {r!r}; roles: {known}, or {DONE}"
                )
        if a.routes and a.default_route not in declared and a.default_route not in (DONE, RANDOM):
            raise ConfigError(
                f"team.agents.{i}.default_route",
                f"unknown role {a.default_route!r}; roles: {known}, or {DONE}, or {RANDOM}",
            )
        for j, r in enumerate(a.next):
            if r not in declared:
                raise ConfigError(f"team.agents.{i}.next.{j}", f"unknown role {r!r}; roles: {known}")
