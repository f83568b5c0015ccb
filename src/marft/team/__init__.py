"""The team: roles, the Flex-MG dependency graph, the schedule of who acts next, prompt building."""

from marft.team.graph import Agent, TeamGraph
from marft.team.prompts import build_messages
from marft.team.schedule import Action, RoutedSchedule, Schedule, StaticSchedule, Step, schedule_for

__all__ = [
    "Action",
    "Agent",
    "RoutedSchedule",
    "Schedule",
    "StaticSchedule",
    "Step",
    "TeamGraph",
    "build_messages",
    "schedule_for",
]
