"""How one team step's env reward is split over the actions that produced it."""

from __future__ import annotations

from collections.abc import Mapping


def team_reward_vector(
    rewards: float | Mapping[str, float], roles: list[str], acting_roles: list[str], assignment: str
) -> tuple[list[float], float]:
    """Split one step's env reward over the step's actions (``env.reward_assignment``).

    Args:
        rewards: the env's team reward, or a reward per role.
        roles: every role of the team.
        acting_roles: the role of each action of the step, in acting order (a role appears once
            per action: twice when it acted twice in a routing team).
        assignment: ``last`` (the last action gets the team reward), ``shared`` (every action
            gets it) or ``per_agent`` (each role's reward goes to its last action).

    Returns:
        ``(reward of each action in the order of acting_roles, team reward)``.
    """
    if isinstance(rewards, (int, float)):
        team = float(rewards)
        if assignment == "per_agent":
            raise ValueError(
                "env.reward_assignment is per_agent but the env returned one team reward; "
                "return a mapping role -> reward or use 'last' or 'shared'"
            )
    else:
        unknown = set(rewards) - set(roles)
        if unknown:
            raise ValueError(f"env returned rewards for unknown roles {sorted(unknown)}; roles: {roles}")
        team = float(sum(rewards.values()))
    if not acting_roles:
        return [], team
    if assignment == "per_agent":
        last = {r: i for i, r in enumerate(acting_roles)}
        return [float(rewards.get(r, 0.0)) if last[r] == i else 0.0 for i, r in enumerate(acting_roles)], team
    if assignment == "last":
        return [0.0] * (len(acting_roles) - 1) + [team], team
    return [team] * len(acting_roles), team
