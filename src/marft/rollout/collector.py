"""The collector: ``n_envs`` env copies x the team -> one batch of Flex-MG trajectories.

Each team step walks the dependency graph level by level: every agent whose inputs exist acts in
one batched generation (one adapter per row), its outputs become inputs of the next level, and
then the envs step on the joint action. Episodes reset automatically, so every iteration holds
exactly ``steps_per_iter`` team steps per env copy.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from marft.config import EnvConfig, SamplingConfig
from marft.envs.base import Env, Observation, env_state, load_env_state, pop_env_metrics
from marft.models.team_model import SequenceBatch, TeamModel
from marft.rollout.backends import HFBackend
from marft.team.graph import TeamGraph
from marft.team.prompts import build_messages

log = logging.getLogger(__name__)


@dataclass
class AgentSteps:
    """Everything the update needs about one agent's ``B * T`` actions (row ``b * T + t``).

    Attributes:
        sequences: prompts and responses.
        old_logprobs: ``[B*T, L]`` token log-probs under the sampling distribution.
        entropy: ``[B*T, L]`` per-token entropy of that distribution.
        features: critic features of the base (adapters disabled): ``[B*T, H]`` for the state
            before the action, ``[B*T, L, H]`` for the state before each token, or None.
        ref_logprobs: ``[B*T, L]`` token log-probs under the reference policy, or None.
        word_counts: ``[B*T]`` words in each decoded action (at least 1).
    """

    sequences: SequenceBatch
    old_logprobs: Tensor
    entropy: Tensor
    features: Tensor | None
    ref_logprobs: Tensor | None
    word_counts: Tensor


@dataclass
class Rollout:
    """One iteration's trajectories. ``B`` env copies, ``T`` steps, ``N`` agents in acting order.

    Attributes:
        rewards: ``[B, T, N]`` reward of each agent's action (after reward assignment).
        team_rewards: ``[B, T]`` the team's reward at each step.
        dones: ``[B, T]`` 1 where the episode ended after step t.
        action_mask: ``[B, T, N]`` 1 where the agent really acted (0 after an episode ended in
            episodic collection).
        agents: per agent (acting order), its actions.
        last_features: critic features of agent 0's observation after the last step (``[B, H]``, or
            ``[B, 1, H]`` for token-level critics), or None.
        truncated: ``[B, T]`` 1 where the episode was cut by ``env.horizon`` (``dones`` is 1 there
            too) rather than ended by the env.
        truncated_features: ``[B, T, H]`` critic features of agent 0's next observation at those
            cuts (zeros elsewhere), or None when there were none.
        per_agent_rewards: whether the env rewarded each agent separately.
        failed_episodes: episodes cut short because the env raised (their last step's actions
            are masked out of the update and their returns are not in ``episode_returns``).
        episode_returns: team return of each episode that ended in this rollout.
        episode_lengths: their lengths in steps.
        transcripts: full conversations of some finished episodes.
        timings: seconds per phase (``generate``, ``score``, ``env``).
        env_metrics: the envs' own counters for this rollout, summed over copies (``pop_metrics``).
    """

    rewards: Tensor
    team_rewards: Tensor
    dones: Tensor
    action_mask: Tensor
    agents: list[AgentSteps]
    last_features: Tensor | None
    truncated: Tensor | None = None
    truncated_features: Tensor | None = None
    per_agent_rewards: bool = False
    failed_episodes: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    transcripts: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    env_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def env_steps(self) -> int:
        """Team steps actually taken (idle steps of finished episodes do not count)."""
        return int(self.action_mask[:, :, 0].sum())


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


def _scatter(full: int, rows: Tensor, values: Tensor, fill: float) -> Tensor:
    """Place ``values`` (one per active env) at ``rows`` of a ``[full, ...]`` tensor filled with ``fill``."""
    if values.shape[0] == full:
        return values
    out = torch.full((full, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    out[rows] = values
    return out


class Collector:
    """Runs the team in ``n_envs`` env copies and gathers :class:`Rollout` batches.

    Two modes:

    * continuing (APPO, TPPO): every env takes exactly ``steps`` team steps per rollout and
      episodes reset automatically, carrying over between rollouts;
    * episodic (group-relative algorithms): every rollout resets all envs, env copies
      ``g*G .. g*G+G-1`` with the same seed (one task instance per group), and runs until every
      episode has ended or ``env.horizon`` steps; finished envs stop generating.

    Args:
        envs: the env copies.
        graph: the team's dependency graph.
        model: the shared team model.
        backend: a generation backend.
        env_cfg: horizon and reward assignment.
        sampling: sampling parameters.
        seed: seeds env resets and sampling.
        features: critic features to compute: ``"last"`` (per action), ``"tokens"`` (per token) or None.
        ref_logprobs: also compute the reference policy's log-probs (for a KL anchor).
        episodic: collect whole episodes in groups (see above).
        group_size: G, in episodic mode.
        transcripts_per_iter: finished episodes kept as full conversations per rollout.
        adapter_of: adapter name per role (default: the role); ``"__base__"`` runs that agent on
            the bare base model (evaluation's per-agent ablation).
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
        features: str | None = "last",
        ref_logprobs: bool = False,
        episodic: bool = False,
        group_size: int = 1,
        transcripts_per_iter: int = 2,
        adapter_of: dict[str, str] | None = None,
    ) -> None:
        self.envs, self.graph, self.model, self.backend = envs, graph, model, backend
        self.env_cfg, self.sampling = env_cfg, sampling
        self.features, self.ref_logprobs = features, ref_logprobs
        self.episodic, self.group_size = episodic, group_size
        self.transcripts_per_iter = transcripts_per_iter
        self.adapter_of = adapter_of or {}
        self._seeds = random.Random(seed)
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.obs: list[Observation] = [env.reset(seed=self._seeds.getrandbits(31)) for env in envs]
        self._ep_return = [0.0] * len(envs)
        self._ep_len = [0] * len(envs)
        self._ep_turns: list[list[dict[str, Any]]] = [[] for _ in envs]
        # Critic features of agent 0's observation of ``self.obs``: computed at the end of a rollout
        # for bootstrapping, and reused as step 0's features by the next rollout.
        self._first_features: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue collecting exactly: RNGs, live episodes, env states."""
        return {
            "seeds": self._seeds.getstate(),
            "generator": self.generator.get_state(),
            "obs": self.obs,
            "ep_return": self._ep_return,
            "ep_len": self._ep_len,
            "ep_turns": self._ep_turns,
            "first_features": None if self._first_features is None else self._first_features.cpu(),
            "envs": [env_state(env) for env in self.envs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["envs"]) != len(self.envs):
            raise ValueError(
                f"the checkpoint holds {len(state['envs'])} env copies but the config asks for "
                f"{len(self.envs)}; resume with the run's env.n_envs"
            )
        self._seeds.setstate(state["seeds"])
        self.generator.set_state(state["generator"])
        self.obs = list(state["obs"])
        self._ep_return, self._ep_len = list(state["ep_return"]), list(state["ep_len"])
        self._ep_turns = list(state["ep_turns"])
        ff = state["first_features"]
        self._first_features = None if ff is None else ff.to(self.model.device)
        for env, st in zip(self.envs, state["envs"], strict=True):
            load_env_state(env, st)

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

    def _score(
        self, batch: SequenceBatch, reuse_first: bool, n_first: int
    ) -> tuple[Tensor | None, Tensor | None]:
        """Critic features and reference log-probs of a level's rows, in one base forward.

        Agent 0's rows at step 0 reuse the previous rollout's bootstrap features when nothing else
        is needed from that forward.
        """
        sp = self.sampling
        cached = self._first_features
        if reuse_first and cached is not None and self.features == "last" and not self.ref_logprobs:
            if batch.prompt_ids.shape[0] == n_first:
                return cached, None
            rest = SequenceBatch(
                *(
                    x[n_first:]
                    for x in (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
                )
            )
            feats, _ = self.model.score_reference(rest, "last")
            return torch.cat([cached, feats], dim=0), None
        return self.model.score_reference(
            batch, self.features, self.ref_logprobs, sp.temperature, sp.top_k, sp.top_p
        )

    def _reset_groups(self, problems: list[int] | None = None) -> None:
        G = self.group_size
        seeds = [self._seeds.getrandbits(31) for _ in range(len(self.envs) // G)]
        for b, env in enumerate(self.envs):
            if problems is not None:
                self.obs[b] = env.reset_to(problems[b])
            else:
                self.obs[b] = env.reset(seed=seeds[b // G])
            self._ep_return[b], self._ep_len[b], self._ep_turns[b] = 0.0, 0, []

    @torch.no_grad()
    def collect(self, steps: int, problems: list[int] | None = None) -> Rollout:
        """Run ``steps`` team steps in every env copy (episodic mode: at most ``steps``).

        Args:
            steps: team steps (episodic: the most an episode may take).
            problems: episodic mode only: start env copy b on problem ``problems[b]`` (``reset_to``)
                instead of a seeded draw.
        """
        B, N, graph = len(self.envs), self.graph.n_agents, self.graph
        tok, device = self.model.tokenizer, self.model.device
        roles = graph.roles
        timings: dict[str, float] = defaultdict(float)
        per_agent: list[dict[str, list[Tensor]]] = [defaultdict(list) for _ in range(N)]
        rewards = torch.zeros(B, steps, N)
        team_rewards = torch.zeros(B, steps)
        dones = torch.zeros(B, steps)
        acted = torch.zeros(B, steps)
        ep_returns, ep_lengths, transcripts = [], [], []
        keep = min(self.transcripts_per_iter, B)
        finished = [False] * B
        cut: list[tuple[int, int, Observation]] = []  # (env, step, next observation) of horizon cuts
        if self.episodic:
            self._reset_groups(problems)
        taken = 0
        failed = 0

        for t in range(steps):
            active = [b for b in range(B) if not finished[b]]
            if not active:
                break
            taken += 1
            n_act = len(active)
            rows_t = torch.tensor(active, device=device)
            outputs: dict[int, dict[str, str]] = {b: {} for b in active}
            convs_kept: dict[int, dict[str, list]] = {b: {} for b in active if b < keep}
            for level in graph.levels:
                t0 = time.perf_counter()
                convs = [
                    build_messages(a, self.obs[b], outputs[b], graph.message_format)
                    for a in level
                    for b in active
                ]
                ids, mask = self._encode(convs)
                row_roles = [self.adapter_of.get(a.role, a.role) for a in level for _ in active]
                timings["env"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                limits = torch.tensor(
                    [a.max_new_tokens or self.sampling.max_new_tokens for a in level for _ in active],
                    device=device,
                )
                gen = self.backend.generate(ids, mask, row_roles, self.generator, limits)
                timings["generate"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                batch = SequenceBatch(ids, mask, gen.response_ids, gen.response_mask)
                feats, ref = self._score(batch, reuse_first=(t == 0 and level[0].index == 0), n_first=n_act)
                timings["score"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                texts = tok.batch_decode(gen.response_ids, skip_special_tokens=True)
                for k, a in enumerate(level):
                    rows = slice(k * n_act, (k + 1) * n_act)
                    store = per_agent[a.index]

                    def put(name: str, value: Tensor, fill: float, store=store, rows_t=rows_t) -> None:
                        store[name].append(_scatter(B, rows_t, value, fill))

                    put("prompt_ids", ids[rows], tok.pad_token_id)
                    put("prompt_mask", mask[rows], 0)
                    put("response_ids", gen.response_ids[rows], tok.pad_token_id)
                    put("response_mask", gen.response_mask[rows], 0)
                    put("logprobs", gen.logprobs[rows], 0.0)
                    put("entropy", gen.entropy[rows], 0.0)
                    if feats is not None:
                        put("features", feats[rows], 0.0)
                    if ref is not None:
                        put("ref_logprobs", ref[rows], 0.0)
                    words = [max(1, len(x.split())) for x in texts[rows]]
                    put("words", torch.tensor(words, dtype=torch.float32, device=device), 1.0)
                    for j, b in enumerate(active):
                        outputs[b][a.role] = texts[k * n_act + j].strip()
                        if b < keep:
                            convs_kept[b][a.role] = convs[k * n_act + j]
                timings["env"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            for b in active:
                env = self.envs[b]
                try:
                    result = env.step(outputs[b])
                    r_vec, team_r = team_reward_vector(
                        result.rewards, roles, roles, self.env_cfg.reward_assignment
                    )
                except Exception as e:  # a user env or reward function: fail the episode, not the run
                    failed += 1
                    log.warning(
                        "env copy %d raised in step(); its episode is dropped: %s",
                        b,
                        "".join(traceback.format_exception_only(e)).strip(),
                    )
                    self._ep_return[b], self._ep_len[b], self._ep_turns[b] = 0.0, 0, []
                    dones[b, t] = 1.0
                    if self.episodic:
                        finished[b] = True
                    else:
                        self.obs[b] = env.reset(seed=self._seeds.getrandbits(31))
                    continue
                rewards[b, t] = torch.tensor(r_vec)
                team_rewards[b, t] = team_r
                acted[b, t] = 1.0
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
                if done and not result.done and self.features is not None and not self.episodic:
                    # Cut by the horizon, not ended by the env: keep the next observation so the
                    # critic can bootstrap from it (a time limit is not a terminal state).
                    cut.append((b, t, result.observation))
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
                    if self.episodic:
                        finished[b] = True
                    else:
                        self.obs[b] = env.reset(seed=self._seeds.getrandbits(31))
                else:
                    self.obs[b] = result.observation
            timings["env"] += time.perf_counter() - t0

        last_features = None
        if self.features is not None and not self.episodic:
            first = graph.agents[0]  # depth 0: its observation needs no other agent's output
            t0 = time.perf_counter()
            ids, mask = self._encode([build_messages(first, o, {}, graph.message_format) for o in self.obs])
            last_features = self.model.critic_features(ids, mask)
            self._first_features = last_features
            if self.features == "tokens":
                last_features = last_features[:, None]
            timings["score"] += time.perf_counter() - t0

        truncated = torch.zeros(B, steps)
        trunc_features = None
        if cut:
            t0 = time.perf_counter()
            first = graph.agents[0]
            ids, mask = self._encode([build_messages(first, o, {}, graph.message_format) for _, _, o in cut])
            feats = self.model.critic_features(ids, mask)
            trunc_features = torch.zeros(B, steps, feats.shape[-1], device=device)
            for k, (b, t, _) in enumerate(cut):
                truncated[b, t] = 1.0
                trunc_features[b, t] = feats[k]
            trunc_features = trunc_features[:, :taken]
            timings["score"] += time.perf_counter() - t0

        agents = []
        for store in per_agent:
            seq = SequenceBatch(
                prompt_ids=_pad_stack(store["prompt_ids"], tok.pad_token_id, left=True).flatten(0, 1),
                prompt_mask=_pad_stack(store["prompt_mask"], 0, left=True).flatten(0, 1),
                response_ids=_pad_stack(store["response_ids"], tok.pad_token_id, left=False).flatten(0, 1),
                response_mask=_pad_stack(store["response_mask"], 0, left=False).flatten(0, 1),
            )
            feats = None
            if self.features == "last":
                feats = torch.stack(store["features"], 1).flatten(0, 1)
            elif self.features == "tokens":
                # [B, H, L] so that the length is last for padding, then back to [B*T, L, H]
                feats = _pad_stack([f.transpose(1, 2) for f in store["features"]], 0.0, left=False)
                feats = feats.flatten(0, 1).transpose(1, 2)
            agents.append(
                AgentSteps(
                    sequences=seq,
                    old_logprobs=_pad_stack(store["logprobs"], 0.0, left=False).flatten(0, 1),
                    entropy=_pad_stack(store["entropy"], 0.0, left=False).flatten(0, 1),
                    features=feats,
                    ref_logprobs=_pad_stack(store["ref_logprobs"], 0.0, left=False).flatten(0, 1)
                    if self.ref_logprobs
                    else None,
                    word_counts=torch.stack(store["words"], 1).flatten(0, 1),
                )
            )
        T = taken
        return Rollout(
            rewards=rewards[:, :T].to(device),
            team_rewards=team_rewards[:, :T].to(device),
            dones=dones[:, :T].to(device),
            action_mask=acted[:, :T, None].expand(B, T, N).contiguous().to(device),
            agents=agents,
            last_features=last_features,
            truncated=truncated[:, :T].to(device),
            truncated_features=trunc_features,
            per_agent_rewards=self.env_cfg.reward_assignment == "per_agent",
            failed_episodes=failed,
            episode_returns=ep_returns,
            episode_lengths=ep_lengths,
            transcripts=transcripts,
            timings=dict(timings),
            env_metrics=pop_env_metrics(self.envs),
        )
