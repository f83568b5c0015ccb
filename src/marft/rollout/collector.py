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

import itertools
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from marft.config import EnvConfig, SamplingConfig
from marft.envs.base import Env, Observation, StepResult, env_state, load_env_state, pop_env_metrics, step_all
from marft.rollout.backends import GenerationBackend
from marft.rollout.rewards import team_reward_vector
from marft.rollout.streams import draw_keys, env_stream
from marft.rollout.trajectory import Prompts, Trajectory, TrajectoryBuilder
from marft.team.graph import Agent, TeamGraph
from marft.team.prompts import build_messages
from marft.team.schedule import Schedule, Step, outputs_of, route_of, schedule_for

log = logging.getLogger(__name__)


@dataclass
class _TeamStep:
    """One env copy's team step in the collector: the schedule's step, the (trajectory step,
    agent) slot of each of its actions, the trajectory step where it ends, and the prompts of its
    actions when its transcript is kept."""

    step: Step
    end: int
    kept: list | None = None
    slots: list[tuple[int, int]] = field(default_factory=list)


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
        schedule: who acts next (default: the team's, :func:`~marft.team.schedule.schedule_for`).
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
        self.schedule = schedule or schedule_for(graph)
        # Generation calls one team step may take (call ids are step * this + turn): a routed
        # step takes at most max_actions; a static one as many as its graph's levels.
        self._turns_per_step = graph.routing.max_actions if graph.routing is not None else graph.n_agents
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
        fmt = self.graph.message_format
        return self._encode([build_messages(self._opener(o), o, [], fmt) for o in observations])

    def _opener(self, observation: Observation) -> Agent:
        """The agent whose value a critic bootstraps from on an observation: the first in acting
        order of a routing team's start (or of the agents the env names), else the first agent."""
        routing = self.graph.routing
        if routing is None:
            return self.graph.agents[0]
        start = observation.next_agents if observation.next_agents is not None else routing.start
        # the first action in credit order: the start agent first in acting order
        return min((self.graph.agent(r) for r in start), key=lambda a: a.index, default=self.graph.agents[0])

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
        # A team step takes one acting round, or (routing) up to max_actions when agents act again.
        rounds = self.graph.routing.max_actions if self.graph.routing is not None else 1
        buf = TrajectoryBuilder(
            len(self.envs), steps * rounds, self.graph.n_agents, {**fills, "words": 1.0}, self.device
        )
        finished = [False] * len(self.envs)
        if self.episodic:
            self._reset_groups(problems)
        for step in range(steps):
            active = [b for b in range(len(self.envs)) if not finished[b]]
            if not active:
                break
            acts = self._act(step, active, buf)
            t0 = time.perf_counter()
            results = step_all([self.envs[b] for b in active], [outputs_of(acts[b].step) for b in active])
            for b, result in zip(active, results, strict=True):
                finished[b] = self._step_env(b, acts[b], buf, result)
            buf.timings["env"] += time.perf_counter() - t0
        self.backend.release()
        return self._assemble(buf)

    def _act(self, step: int, active: list[int], buf: TrajectoryBuilder) -> dict[int, _TeamStep]:
        """Generate every turn of team step ``step`` in the active env copies: one batched call
        per turn over every ready (agent, env copy) pair, call id ``step * turns_per_step + turn``
        (env-copy slices line up with one collector). Copy b's step starts at b's next free index
        of the step axis and moves to a new round when an agent acts again, so that a (step,
        agent) holds at most one action and a copy's layout depends only on its own history."""
        keep = self.transcripts_per_iter
        acts = {
            b: _TeamStep(
                self.schedule.begin(self.env_offset + b, self.obs[b], self._streams[b]),
                end=buf.next_step[b],
                kept=[] if self.env_offset + b < keep else None,
            )
            for b in active
        }
        in_round: dict[int, set[str]] = {b: set() for b in active}
        for turn in itertools.count():
            rows = []
            for b in active:
                agents = acts[b].step.ready()
                if any(a.role in in_round[b] for a in agents):
                    acts[b].end, in_round[b] = acts[b].end + 1, set()
                in_round[b].update(a.role for a in agents)
                rows.extend((a, b) for a in agents)
            if not rows:
                break
            rows.sort(key=lambda row: row[0].index)  # agents in acting order, env copies ascending
            buf.call = step * self._turns_per_step + turn
            self._generate_turn(rows, acts, buf)
        for b in active:
            buf.next_step[b] = acts[b].end + 1
        buf.taken = max(buf.next_step)
        return acts

    def _generate_turn(self, rows: list[tuple[Agent, int]], acts: dict[int, _TeamStep], buf) -> None:
        """One batched generation over (agent, env copy) rows, agents in acting order."""
        t0 = time.perf_counter()
        fmt = self.graph.message_format
        convs = [build_messages(a, self.obs[b], acts[b].step.seen(a), fmt) for a, b in rows]
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
            values = dict(
                prompt_ids=prompts.ids[sl],
                prompt_mask=prompts.mask[sl],
                response_ids=gen.response_ids[sl],
                response_mask=gen.response_mask[sl],
                logprobs=gen.logprobs[sl],
                entropy=gen.entropy[sl] if gen.entropy is not None else torch.zeros_like(gen.logprobs[sl]),
                words=torch.tensor(
                    [max(1, len(x.split())) for x in texts[sl]], dtype=torch.float32, device=self.device
                ),
            )
            for t in sorted({acts[b].end for b in envs}):  # env copies in different rounds
                sel = [j for j, b in enumerate(envs) if acts[b].end == t]
                part = values if len(sel) == len(envs) else {k: v[sel] for k, v in values.items()}
                buf.record(agent.index, t, [envs[j] for j in sel], part)
                buf.turns[[envs[j] for j in sel], t, agent.index] = buf.call
            for j, b in enumerate(envs):
                acts[b].step.record(agent, texts[sl.start + j].strip())
                acts[b].slots.append((acts[b].end, agent.index))
                if acts[b].kept is not None:
                    acts[b].kept.append(convs[sl.start + j])
        buf.timings["env"] += time.perf_counter() - t0

    def _step_env(
        self, b: int, act: _TeamStep, buf: TrajectoryBuilder, result: StepResult | Exception
    ) -> bool:
        """Record env copy b's step on its joint action; returns whether it finished (episodic mode)."""
        env, roles, t = self.envs[b], self.graph.roles, act.end
        acting = [a.role for a in act.step.actions]
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
        for (tt, n), r in zip(act.slots, r_vec, strict=True):
            buf.rewards[b][tt][n] = r
            buf.acted[b][tt][n] = 1.0
        buf.team_rewards[b][t], buf.step_ends[b][t] = team_r, 1.0
        self._count_route(act.step, buf)
        self._ep_return[b] += team_r
        self._ep_len[b] += 1
        if act.kept is not None:
            self._ep_turns[b].append(self._turn_record(b, act, r_vec, team_r, result))
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

    def _count_route(self, step, buf: TrajectoryBuilder) -> None:
        """Routing teams: the step's route and the router counters."""
        if self.graph.routing is None:
            return
        buf.routes.append(route_of(step))
        buf.route_metrics["router_actions"] += step.router_actions
        buf.route_metrics["route_invalid"] += step.invalid
        buf.route_metrics["route_cut"] += step.cut

    def _turn_record(
        self, b: int, act: _TeamStep, r_vec: list[float], team_r: float, result: StepResult
    ) -> dict[str, Any]:
        """A transcript's step: each action's prompt, response, reward; the team's reward, route."""
        record = {
            "step": self._ep_len[b] - 1,
            "agents": [
                {"role": a.role, "messages": msgs, "response": a.text, "reward": r}
                for a, msgs, r in zip(act.step.actions, act.kept, r_vec, strict=True)
            ],
            "reward": team_r,
            "correct": result.correct,
            "answer": result.answer,
            "info": result.info,
        }
        if self.graph.routing is not None:
            record["route"] = route_of(act.step)
        return record

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
            step_ends=torch.tensor(buf.step_ends)[:, :T].to(device),
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
            routes=buf.routes,
            route_metrics=dict(buf.route_metrics),
        )
