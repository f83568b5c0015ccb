"""Per-agent observations as chat messages.

Markup comes only from the tokenizer's chat template; here we decide *content*: the role prompt
as the system message, and the env's observation plus the observed agents' outputs as the user
message.
"""

from __future__ import annotations

from collections.abc import Sequence

from marft.envs.base import Observation
from marft.team.graph import Agent


def build_messages(
    agent: Agent, observation: Observation, seen: Sequence[tuple[str, str]], message_format: str
) -> list[dict[str, str]]:
    """Chat messages for ``agent`` at one step.

    Args:
        agent: the acting agent.
        observation: the env's observation at this step (shared text plus private per-role text).
        seen: the ``(role, output)`` pairs of this step it sees, in order (the schedule's
            :meth:`~marft.team.schedule.Step.seen`: observed agents that acted, or its route).
        message_format: how one observed output is quoted, e.g. ``"{role}: {content}"``.

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]`` (no system message when the prompt is empty).
    """
    parts = [observation.text] if observation.text else []
    private = observation.private.get(agent.role)
    if private:
        parts.append(private)
    parts.extend(message_format.format(role=r, content=text) for r, text in seen)
    messages = [{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []
    messages.append({"role": "user", "content": "\n".join(parts)})
    return messages
