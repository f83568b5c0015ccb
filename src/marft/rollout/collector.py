"""The collector: ``n_envs`` env copies x the team -> one :class:`Trajectory`.

Each team step asks the schedule which agents are ready in every active env copy; all ready
(agent, env copy) pairs act in one batched generation (one adapter per row), their outputs
become inputs of the agents after them, and once no agent is ready the envs step on the joint
action. With the static dependency graph the turns are the graph's levels.

Two modes: continuing (APPO, TPPO): every env copy takes exactly ``steps`` team steps per call and
episodes reset automatically, carrying over between calls; episodic (group-relative algorithms,
evaluation): every call resets all env copies, ``g*G .. g*G+G-1`` with the same seed (one task
instance per group), and runs until every episode has ended or ``steps`` steps; finished copies
stop generating.

The collector knows a tokenizer (chat templates, decoding) and a generation backend, never the
model: critic features and reference log-probs are the scoring phase's work.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from typing import Any

import torch

from marft.config import EnvConfig, SamplingConfig
from marft.envs.base import Env, Observation, StepResult, env_state, load_env_state, pop_env_metrics, step_all
from marft.rollout.backends import GenerationBackend
from marft.rollout.streams import draw_keys, env_stream
from marft.rollout.trajectory import Prompts, Trajectory, TrajectoryBuilder
from marft.team.graph import Agent, TeamGraph
from marft.team.prompts import build_messages
from marft.team.schedule import Schedule, StaticSchedule

log = logging.getLogger(__name__)


def team_reward_vector(
    rewards, roles: list[str], acting_roles: list[str], assignment: str
) -> tuple[list[float], float]:
    """Split one step's env reward over the agents that acted.

    Returns:
        ``(per-agent rewards in the order of acting_roles, team reward)``.
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
    """Runs the team in ``n_envs`` env copies and gathers :class:`Trajectory` batches.

    Args:
        envs: the env copies.
        graph: the team's dependency graph.
        tokenizer: the base model's tokenizer (chat template, left padding).
        backend: a generation backend (:class:`~marft.rollout.backends.GenerationBackend`).
        env_cfg: horizon and reward assignment.
        sampling: sampling parameters (the default action length).
        seed: the run seed: env copy b's resets and samples draw from its own stream
            (:func:`~marft.rollout.streams.env_stream` of ``env_offset + b``).
        episodic: collect whole episodes in groups of ``group_size`` (see the module docstring).
        group_size: G, in episodic mode.
        transcripts_per_iter: finished episodes kept as full conversations per call.
        adapter_of: adapter name per role (default: the role); ``"__base__"`` runs that agent on
            the bare base model (evaluation's per-agent ablation).
        schedule: who acts next (default: the static dependency graph).
        env_offset: the global index of the first env copy (a rollout worker's slice of the run).
    """

    def __init__(
        self,
        envs: list[Env],
        graph: TeamGraph,
        tokenizer,
        backend: GenerationBackend,
        env_cfg: EnvConfig,
        sampling: SamplingConfig,
        seed: int = 0,
        episodic: bool = False,
        group_size: int = 1,
        transcripts_per_iter: int = 2,
        adapter_of: dict[str, str] | None = None,
        schedule: Schedule | None = None,
        env_offset: int = 0,
    ) -> None:
        self.envs, self.graph, self.tokenizer, self.backend = envs, graph, tokenizer, backend
        self.env_cfg, self.sampling = env_cfg, sampling
        self.episodic, self.group_size = episodic, group_size
        self.transcripts_per_iter = transcripts_per_iter
        self.adapter_of = adapter_of or {}
        self.schedule = schedule or StaticSchedule(graph)
        self._index = {a.role: a.index for a in graph.agents}
        self.device = backend.device
        self.env_offset = env_offset
        self._streams = [env_stream(seed, env_offset + b) for b in range(len(envs))]
        self.obs: list[Observation] = [
            env.reset(seed=stream.getrandbits(31)) for env, stream in zip(envs, self._streams, strict=True)
        ]
        self._ep_return = [0.0] * len(envs)
        self._ep_len = [0] * len(envs)
        self._ep_turns: list[list[dict[str, Any]]] = [[] for _ in envs]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue collecting exactly, as lists over env copies: random
        streams, live episodes, env states."""
        return {
            "streams": [s.getstate() for s in self._streams],
            "obs": self.obs,
            "ep_return": self._ep_return,
            "ep_len": self._ep_len,
            "ep_turns": self._ep_turns,
            "envs": [env_state(env) for env in self.envs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["envs"]) != len(self.envs):
            raise ValueError(
                f"the checkpoint holds {len(state['envs'])} env copies but the config asks for "
                f"{len(self.envs)}; resume with the run's env.n_envs"
            )
        for stream, st in zip(self._streams, state["streams"], strict=True):
            stream.setstate(st)
        self.obs = list(state["obs"])
        self._ep_return, self._ep_len = list(state["ep_return"]), list(state["ep_len"])
        self._ep_turns = list(state["ep_turns"])
        for env, st in zip(self.envs, state["envs"], strict=True):
            load_env_state(env, st)

    def _encode(self, conversations: list[list[dict[str, str]]]) -> Prompts:
        enc = self.tokenizer.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        return Prompts(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def _first_agent_prompts(self, observations: Sequence[Observation]) -> Prompts:
        """The first agent's prompts of some observations (what a critic bootstraps from)."""
        first = self.graph.agents[0]
        return self._encode([build_messages(first, o, {}, self.graph.message_format) for o in observations])

    def _reset_groups(self, problems: list[int] | None = None) -> None:
        G = self.group_size
        seeds = [self._streams[g * G].getrandbits(31) for g in range(len(self.envs) // G)]
        for b, env in enumerate(self.envs):
            if problems is not None:
                self.obs[b] = env.reset_to(problems[b])
            else:
                self.obs[b] = env.reset(seed=seeds[b // G])
            self._ep_return[b], self._ep_len[b], self._ep_turns[b] = 0.0, 0, []

    @torch.no_grad()
    def collect(self, steps: int, problems: list[int] | None = None) -> Trajectory:
        """Run ``steps`` team steps in every env copy (episodic mode: at most ``steps``).

        Args:
            steps: team steps (episodic: the most an episode may take).
            problems: episodic mode only: start env copy b on problem ``problems[b]`` (``reset_to``)
                instead of a seeded draw.
        """
        pad = self.tokenizer.pad_token_id
        fills = dict(
            prompt_ids=pad, prompt_mask=0, response_ids=pad, response_mask=0, logprobs=0.0, entropy=0.0
        )
        buf = TrajectoryBuilder(
            len(self.envs), steps, self.graph.n_agents, {**fills, "words": 1.0}, self.device
        )
        finished = [False] * len(self.envs)
        if self.episodic:
            self._reset_groups(problems)
        for t in range(steps):
            active = [b for b in range(len(self.envs)) if not finished[b]]
            if not active:
                break
            buf.taken += 1
            outputs, kept = self._act(t, active, buf)
            buf.close_step(t)
            t0 = time.perf_counter()
            results = step_all([self.envs[b] for b in active], [outputs[b] for b in active])
            for b, result in zip(active, results, strict=True):
                finished[b] = self._step_env(b, t, outputs[b], kept.get(b), buf, result)
            buf.timings["env"] += time.perf_counter() - t0
        self.backend.release()
        return self._assemble(buf)

    def _act(self, t: int, active: list[int], buf: TrajectoryBuilder) -> tuple[dict, dict]:
        """Generate every turn of step t: ``(outputs by env copy and role, kept prompts)``."""
        outputs: dict[int, dict[str, str]] = {b: {} for b in active}
        keep = self.transcripts_per_iter
        kept: dict[int, dict[str, list]] = {b: {} for b in active if self.env_offset + b < keep}
        turn = 0
        while True:
            ready = {
                b: {a.role for a in self.schedule.ready(self.env_offset + b, outputs[b])} for b in active
            }
            rows = [(a, b) for a in self.graph.agents for b in active if a.role in ready[b]]
            if not rows:
                return outputs, kept
            self._generate_turn(t, turn, rows, outputs, kept, buf)
            turn += 1

    def _generate_turn(
        self, t, turn, rows: list[tuple[Agent, int]], outputs, kept, buf: TrajectoryBuilder
    ) -> None:
        """One batched generation over (agent, env copy) rows, agents in acting order."""
        t0 = time.perf_counter()
        convs = [build_messages(a, self.obs[b], outputs[b], self.graph.message_format) for a, b in rows]
        prompts = self._encode(convs)
        adapters = [self.adapter_of.get(a.role, a.role) for a, _ in rows]
        limits = [a.max_new_tokens or self.sampling.max_new_tokens for a, _ in rows]
        buf.timings["env"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        keys = draw_keys(self._streams, [b for _, b in rows], self.device)
        gen = self.backend.generate(prompts, adapters, torch.tensor(limits, device=self.device), keys)
        buf.timings["generate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        texts = self.tokenizer.batch_decode(gen.response_ids, skip_special_tokens=True)
        start = 0
        for agent in self.graph.agents:
            envs = [b for a, b in rows if a is agent]
            if not envs:
                continue
            sl = slice(start, start + len(envs))
            start += len(envs)
            words = [max(1, len(x.split())) for x in texts[sl]]
            values = dict(
                prompt_ids=prompts.ids[sl],
                prompt_mask=prompts.mask[sl],
                response_ids=gen.response_ids[sl],
                response_mask=gen.response_mask[sl],
                logprobs=gen.logprobs[sl],
                entropy=gen.entropy[sl] if gen.entropy is not None else torch.zeros_like(gen.logprobs[sl]),
                words=torch.tensor(words, dtype=torch.float32, device=self.device),
            )
            buf.record(agent.index, t, envs, values)
            buf.turns[envs, t, agent.index] = turn
            for j, b in enumerate(envs):
                outputs[b][agent.role] = texts[sl.start + j].strip()
                if b in kept:
                    kept[b][agent.role] = convs[sl.start + j]
        buf.timings["env"] += time.perf_counter() - t0

    def _step_env(
        self,
        b: int,
        t: int,
        actions: dict[str, str],
        kept,
        buf: TrajectoryBuilder,
        result: StepResult | Exception,
    ) -> bool:
        """Record env copy b's step on its joint action; returns whether it finished (episodic mode)."""
        env, roles = self.envs[b], self.graph.roles
        acting = [r for r in roles if r in actions]
        try:
            if isinstance(result, Exception):
                raise result
            r_vec, team_r = team_reward_vector(result.rewards, roles, acting, self.env_cfg.reward_assignment)
        except Exception as e:  # a user env or reward function: fail the episode, not the run
            buf.failed += 1
            log.warning(
                "env copy %d raised in step(); its episode is dropped: %s",
                b,
                "".join(traceback.format_exception_only(e)).strip(),
            )
            self._ep_return[b], self._ep_len[b], self._ep_turns[b] = 0.0, 0, []
            buf.dones[b][t] = 1.0
            if not self.episodic:
                self.obs[b] = env.reset(seed=self._streams[b].getrandbits(31))
            return self.episodic
        for role, r in zip(acting, r_vec, strict=True):
            buf.rewards[b][t][self._index[role]] = r
            buf.acted[b][t][self._index[role]] = 1.0
        buf.team_rewards[b][t] = team_r
        self._ep_return[b] += team_r
        self._ep_len[b] += 1
        if kept is not None:
            self._ep_turns[b].append(self._turn_record(b, acting, actions, kept, team_r, result))
        done = result.done or self._ep_len[b] >= self.env_cfg.horizon
        if done and not result.done and not self.episodic:
            # Cut by the horizon, not ended by the env: keep the next observation so that a critic
            # can bootstrap from it (a time limit is not a terminal state).
            buf.cuts.append((b, t, result.observation))
        if not done:
            self.obs[b] = result.observation
            return False
        self._end_episode(b, t, buf)
        return self.episodic

    def _turn_record(
        self, b: int, acting, actions, kept, team_r: float, result: StepResult
    ) -> dict[str, Any]:
        """One step of a transcript: each acting agent's prompt and response, the reward, and
        whether the team was right (``StepResult.correct``)."""
        return {
            "step": self._ep_len[b] - 1,
            "agents": [{"role": r, "messages": kept[r], "response": actions[r]} for r in acting],
            "reward": team_r,
            "correct": result.correct,
            "answer": result.answer,
            "info": result.info,
        }

    def _end_episode(self, b: int, t: int, buf: TrajectoryBuilder) -> None:
        buf.dones[b][t] = 1.0
        buf.episode_returns.append(self._ep_return[b])
        buf.episode_lengths.append(self._ep_len[b])
        keep = self.transcripts_per_iter
        if self.env_offset + b < keep and len(buf.transcripts) < self.transcripts_per_iter:
            buf.transcripts.append(
                {"env": self.env_offset + b, "episode_return": self._ep_return[b], "turns": self._ep_turns[b]}
            )
        self._ep_return[b], self._ep_len[b], self._ep_turns[b] = 0.0, 0, []
        if not self.episodic:
            self.obs[b] = self.envs[b].reset(seed=self._streams[b].getrandbits(31))

    def _assemble(self, buf: TrajectoryBuilder) -> Trajectory:
        T, device = buf.taken, self.device
        t0 = time.perf_counter()
        cut_index = torch.tensor([[b, t] for b, t, _ in buf.cuts], dtype=torch.long).reshape(-1, 2)
        truncated = torch.zeros(len(self.envs), buf.steps)
        truncated[cut_index[:, 0], cut_index[:, 1]] = 1.0
        cut_prompts = self._first_agent_prompts([o for _, _, o in buf.cuts]) if buf.cuts else None
        next_prompts = None if self.episodic else self._first_agent_prompts(self.obs)
        buf.timings["env"] += time.perf_counter() - t0
        return Trajectory(
            agents=[buf.agent_actions(n) for n in range(self.graph.n_agents)],
            rewards=torch.tensor(buf.rewards)[:, :T].to(device),
            team_rewards=torch.tensor(buf.team_rewards)[:, :T].to(device),
            dones=torch.tensor(buf.dones)[:, :T].to(device),
            action_mask=torch.tensor(buf.acted)[:, :T].to(device),
            turns=buf.turns[:, :T].to(device),
            truncated=truncated[:, :T].to(device),
            cut_index=cut_index.to(device),
            cut_prompts=cut_prompts,
            next_prompts=next_prompts,
            per_agent_rewards=self.env_cfg.reward_assignment == "per_agent",
            failed_episodes=buf.failed,
            episode_returns=buf.episode_returns,
            episode_lengths=buf.episode_lengths,
            transcripts=buf.transcripts,
            timings=dict(buf.timings),
            env_metrics=pop_env_metrics(self.envs),
        )
