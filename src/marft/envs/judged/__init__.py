"""Open-ended team work judged by rules and a model: the ``judged`` env, its tasks and rules."""

from marft.envs.judged.env import JudgedConfig, JudgedEnv, JudgeRequest, Judging
from marft.envs.judged.rules import Rules, check_rules, count_words, split_slides
from marft.envs.judged.tasks import JudgedTask, load_tasks

__all__ = [
    "JudgeRequest",
    "JudgedConfig",
    "JudgedEnv",
    "JudgedTask",
    "Judging",
    "Rules",
    "check_rules",
    "count_words",
    "load_tasks",
    "split_slides",
]
