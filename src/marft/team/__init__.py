"""The team: roles, the Flex-MG dependency graph, the schedule of who acts next, prompt building."""

from marft.team.graph import Agent, TeamGraph
from marft.team.prompts import build_messages
from marft.team.schedule import Schedule, StaticSchedule

__all__ = ["Agent", "Schedule", "StaticSchedule", "TeamGraph", "build_messages"]
