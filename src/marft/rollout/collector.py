"""The collector: ``n_envs`` env copies x the team -> one batch of Flex-MG trajectories.

Each team step walks the dependency graph level by level: every agent whose inputs exist acts in
one batched generation (one adapter per row), its outputs become inputs of the next level, and
then the envs step on the joint action. Episodes reset automatically, so every iteration holds
exactly ``steps_per_iter`` team steps per env copy.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from marft.config import EnvConfig, SamplingConfig
from marft.envs.base import Env, Observation
from marft.models.team_model import SequenceBatch, TeamModel
from marft.rollout.backends import HFBackend
from marft.team.graph import TeamGraph
from marft.team.prompts import build_messages


@dataclass
class AgentSteps:
    """Everything the update needs about one agent's ``B * T`` actions (row ``b * T + t``).

    Attributes:
        sequences: prompts and responses.
        old_logprobs: ``[B*T, L]`` token log-probs under the sampling distribution.
        entropy: ``[B*T, L]`` per-token entropy of that distribution.
        features: ``[B*T, H]`` critic features of the observation (base, adapters disabled), or None.
        word_counts: ``[B*T]`` words in each decoded action (at least 1).
    """

    sequences: SequenceBatch
    old_logprobs: Tensor
    entropy: Tensor
    features: Tensor | None
    word_counts: Tensor


@dataclass
class Rollout:
    """One iteration's trajectories. ``B`` env copies, ``T`` steps, ``N`` agents in acting order.

    Attributes:
        rewards: ``[B, T, N]`` reward of each agent's action.
        dones: ``[B, T]`` 1 where the episode ended after step t.
        action_mask: ``[B, T, N]`` 1 where the agent really acted.
        agents: per agent (acting order), its actions.
        last_features: ``[B, H]`` critic features of agent 0's observation after the last step.
        episode_returns: team return of each episode that ended in this rollout.
        episode_lengths: their lengths in steps.
        transcripts: full conversations of some finished episodes.
        timings: seconds per phase (``generate``, ``score``, ``env``).
    """

    rewards: Tensor
    dones: Tensor
    action_mask: Tensor
    agents: list[AgentSteps]
    last_features: Tensor | None
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    transcripts: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env_steps(self) -> int:
        return int(self.dones.numel())


def _pad_stack(tensors: Sequence[Tensor], value: float, left: bool) -> Tensor:
    """Stack ``[B, *]`` tensors of varying width along a new dim 1, padding the last dim."""
    width = max(t.shape[-1] for t in tensors)
    padded = [
        F.pad(t, (width - t.shape[-1], 0) if left else (0, width - t.shape[-1]), value=value) for t in tensors
    ]
    return torch.stack(padded, dim=1)


def team_reward_vector(
    rewards, roles: list[str], acting_roles: list[str], assignment: str
) -> tuple[list[float], float]:
    """Split one step's env reward over the agents.

    Returns:
        ``(per-agent rewards in acting order, team reward)``.
    """
    if isinstance(rewards, (int, float)):
        team = float(rewards)
        if assignment == "per_agent":
            raise ValueError(
                "env.reward_assignment is per_agent but the env returned one team reward; "
                "return a mapping role -> reward or use 'last' or 'shared'"
            )
        if assignment == "last":
            return [0.0] * (len(acting_roles) - 1) + [team], team
        return [team] * len(acting_roles), team
    unknown = set(rewards) - set(roles)
    if unknown:
        raise ValueError(f"env returned rewards for unknown roles {sorted(unknown)}; roles: {roles}")
    team = float(sum(rewards.values()))
    if assignment == "per_agent":
        return [float(rewards.get(r, 0.0)) for r in acting_roles], team
    if assignment == "last":
        return [0.0] * (len(acting_roles) - 1) + [team], team
    return [team] * len(acting_roles), team


class Collector:
    """Runs the team in ``n_envs`` env copies and gathers :class:`Rollout` batches.

    Args:
        envs: the env copies.
        graph: the team's dependency graph.
        model: the shared team model.
        backend: a generation backend.
        env_cfg: horizon and reward assignment.
        sampling: sampling parameters.
        seed: seeds env resets and sampling.
        with_critic: compute critic features (off for critic-free algorithms).
        transcripts_per_iter: finished episodes kept as full conversations per rollout.
    """

    def __init__(
        self,
        envs: list[Env],
        graph: TeamGraph,
        model: TeamModel,
        backend: HFBackend,
        env_cfg: EnvConfig,
        sampling: SamplingConfig,
        seed: int = 0,
        with_critic: bool = True,
        transcripts_per_iter: int = 2,
    ) -> None:
        self.envs, self.graph, self.model, self.backend = envs, graph, model, backend
        self.env_cfg, self.sampling = env_cfg, sampling
        self.with_critic = with_critic
        self.transcripts_per_iter = transcripts_per_iter
        self._seeds = random.Random(seed)
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.obs: list[Observation] = [env.reset(seed=self._seeds.getrandbits(31)) for env in envs]
        self._ep_return = [0.0] * len(envs)
        self._ep_len = [0] * len(envs)
        self._ep_turns: list[list[dict[str, Any]]] = [[] for _ in envs]
        # Critic features of agent 0's observation of ``self.obs``: computed at the end of a rollout
        # for bootstrapping, and reused as step 0's features by the next rollout.
        self._first_features: Tensor | None = None

    def _encode(self, conversations: list[list[dict[str, str]]]) -> tuple[Tensor, Tensor]:
        enc = self.model.tokenizer.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        return enc["input_ids"].to(self.model.device), enc["attention_mask"].to(self.model.device)

    def _features(self, ids: Tensor, mask: Tensor, reuse_first: bool, B: int) -> Tensor | None:
        """Critic features of a level's rows; agent 0's rows at step 0 come from the cache."""
        if not self.with_critic:
            return None
        if not (reuse_first and self._first_features is not None):
            return self.model.critic_features(ids, mask)
        if ids.shape[0] == B:
            return self._first_features
        rest = self.model.critic_features(ids[B:], mask[B:])
        return torch.cat([self._first_features, rest], dim=0)

    @torch.no_grad()
    def collect(self, steps: int) -> Rollout:
        """Run ``steps`` team steps in every env copy."""
        B, N, graph = len(self.envs), self.graph.n_agents, self.graph
        tok = self.model.tokenizer
        roles = graph.roles
        timings: dict[str, float] = defaultdict(float)
        per_agent: list[dict[str, list[Tensor]]] = [defaultdict(list) for _ in range(N)]
        rewards = torch.zeros(B, steps, N)
        dones = torch.zeros(B, steps)
        ep_returns, ep_lengths, transcripts = [], [], []
        keep = min(self.transcripts_per_iter, B)

        for t in range(steps):
            outputs: list[dict[str, str]] = [{} for _ in range(B)]
            convs_kept: list[dict[str, list]] = [{} for _ in range(keep)]
            for level in graph.levels:
                t0 = time.perf_counter()
                convs = [
                    build_messages(a, self.obs[b], outputs[b], graph.message_format)
                    for a in level
                    for b in range(B)
                ]
                ids, mask = self._encode(convs)
                row_roles = [a.role for a in level for _ in range(B)]
                timings["env"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                gen = self.backend.generate(ids, mask, row_roles, self.generator)
                timings["generate"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                feats = self._features(ids, mask, reuse_first=(t == 0 and level[0].index == 0), B=B)
                timings["score"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                texts = tok.batch_decode(gen.response_ids, skip_special_tokens=True)
                for k, a in enumerate(level):
                    rows = slice(k * B, (k + 1) * B)
                    store = per_agent[a.index]
                    store["prompt_ids"].append(ids[rows])
                    store["prompt_mask"].append(mask[rows])
                    store["response_ids"].append(gen.response_ids[rows])
                    store["response_mask"].append(gen.response_mask[rows])
                    store["logprobs"].append(gen.logprobs[rows])
                    store["entropy"].append(gen.entropy[rows])
                    if feats is not None:
                        store["features"].append(feats[rows])
                    words = [max(1, len(s.split())) for s in texts[rows]]
                    store["words"].append(torch.tensor(words, dtype=torch.float32))
                    for b in range(B):
                        outputs[b][a.role] = texts[k * B + b].strip()
                    for b in range(keep):
                        convs_kept[b][a.role] = convs[k * B + b]
                timings["env"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            for b, env in enumerate(self.envs):
                result = env.step(outputs[b])
                r_vec, team_r = team_reward_vector(
                    result.rewards, roles, roles, self.env_cfg.reward_assignment
                )
                rewards[b, t] = torch.tensor(r_vec)
                self._ep_return[b] += team_r
                self._ep_len[b] += 1
                if b < keep:
                    self._ep_turns[b].append(
                        {
                            "step": self._ep_len[b] - 1,
                            "agents": [
                                {"role": r, "messages": convs_kept[b][r], "response": outputs[b][r]}
                                for r in roles
                            ],
                            "reward": team_r,
                            "info": result.info,
                        }
                    )
                done = result.done or self._ep_len[b] >= self.env_cfg.horizon
                if done:
                    dones[b, t] = 1.0
                    ep_returns.append(self._ep_return[b])
                    ep_lengths.append(self._ep_len[b])
                    if b < keep and len(transcripts) < self.transcripts_per_iter:
                        transcripts.append(
                            {"env": b, "episode_return": self._ep_return[b], "turns": self._ep_turns[b]}
                        )
                    self._ep_return[b], self._ep_len[b] = 0.0, 0
                    self._ep_turns[b] = []
                    self.obs[b] = env.reset(seed=self._seeds.getrandbits(31))
                else:
                    self.obs[b] = result.observation
            timings["env"] += time.perf_counter() - t0

        last_features = None
        if self.with_critic:
            first = graph.agents[0]  # depth 0: its observation needs no other agent's output
            t0 = time.perf_counter()
            ids, mask = self._encode([build_messages(first, o, {}, graph.message_format) for o in self.obs])
            last_features = self.model.critic_features(ids, mask)
            self._first_features = last_features
            timings["score"] += time.perf_counter() - t0

        agents = []
        for store in per_agent:
            seq = SequenceBatch(
                prompt_ids=_pad_stack(store["prompt_ids"], tok.pad_token_id, left=True).flatten(0, 1),
                prompt_mask=_pad_stack(store["prompt_mask"], 0, left=True).flatten(0, 1),
                response_ids=_pad_stack(store["response_ids"], tok.pad_token_id, left=False).flatten(0, 1),
                response_mask=_pad_stack(store["response_mask"], 0, left=False).flatten(0, 1),
            )
            agents.append(
                AgentSteps(
                    sequences=seq,
                    old_logprobs=_pad_stack(store["logprobs"], 0.0, left=False).flatten(0, 1),
                    entropy=_pad_stack(store["entropy"], 0.0, left=False).flatten(0, 1),
                    features=torch.stack(store["features"], 1).flatten(0, 1) if self.with_critic else None,
                    word_counts=torch.stack(store["words"], 1).flatten(0, 1).to(self.model.device),
                )
            )
        return Rollout(
            rewards=rewards.to(self.model.device),
            dones=dones.to(self.model.device),
            action_mask=torch.ones(B, steps, N, device=self.model.device),
            agents=agents,
            last_features=last_features,
            episode_returns=ep_returns,
            episode_lengths=ep_lengths,
            transcripts=transcripts,
            timings=dict(timings),
        )
