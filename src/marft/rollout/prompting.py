"""Prompts as token ids: the tokenizer's chat template over the team's messages, left-padded, on
the generation backend's device."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from marft.envs.base import Observation
from marft.rollout.trajectory import Prompts
from marft.team.graph import Agent, TeamGraph
from marft.team.prompts import build_messages


class PromptEncoder:
    """Encodes conversations (lists of chat messages) into :class:`Prompts`.

    Args:
        tokenizer: the base model's tokenizer (chat template, left padding).
        graph: the team (message format, who opens a team step).
        device: where the prompts go.
    """

    def __init__(self, tokenizer, graph: TeamGraph, device: torch.device) -> None:
        self.tokenizer = tokenizer
        self.graph = graph
        self.device = device

    def encode(self, conversations: list[list[dict[str, str]]]) -> Prompts:
        """The chat template of each conversation with a generation prompt, as one padded batch."""
        enc = self.tokenizer.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        return Prompts(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def first_agent_prompts(self, observations: Sequence[Observation]) -> Prompts:
        """The first agent's prompts of some observations (what a critic bootstraps from)."""
        fmt = self.graph.message_format
        return self.encode([build_messages(self.opener(o), o, [], fmt) for o in observations])

    def opener(self, observation: Observation) -> Agent:
        """The agent whose value a critic bootstraps from on an observation: the first in acting
        order of a routing team's start (or of the agents the env names), else the first agent."""
        graph = self.graph
        if graph.routing is None:
            return graph.agents[0]
        start = observation.next_agents if observation.next_agents is not None else graph.routing.start
        # the first action in credit order: the start agent first in acting order
        return min((graph.agent(r) for r in start), key=lambda a: a.index, default=graph.agents[0])
