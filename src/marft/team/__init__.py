"""The team: roles, the Flex-MG dependency graph and prompt building."""

from marft.team.graph import Agent, TeamGraph
from marft.team.prompts import build_messages

__all__ = ["Agent", "TeamGraph", "build_messages"]
