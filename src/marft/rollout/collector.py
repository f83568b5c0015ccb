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
import traceback
from typing import Any

import torch

from marft.config import EnvConfig, SamplingConfig
from marft.envs.base import StepResult
from marft.envs.copies import EnvCopies
from marft.rollout.backends import GenerationBackend
from marft.rollout.builder import ActionRows, TrajectoryBuilder
from marft.rollout.episodes import LiveEpisodes, TeamStep, transcript_step
from marft.rollout.generators import Generators
from marft.rollout.nested import NestedGroups
from marft.rollout.prompting import PromptEncoder
from marft.rollout.rewards import team_reward_vector
from marft.rollout.streams import draw_keys, env_stream, problem_stream
from marft.rollout.trajectory import Trajectory
from marft.team.graph import Agent, TeamGraph
from marft.team.prompts import build_messages
from marft.team.schedule import Schedule, outputs_of, route_of, schedule_for

log = logging.getLogger(__name__)


class Collector:
    """Runs the team in ``n_envs`` env copies and gathers :class:`Trajectory` batches (the
    in-process :class:`~marft.rollout.sampler.Sampler`).

    Args:
        envs: the env copies, with what their class can do (:func:`marft.compose.build_envs`).
        graph: the team's dependency graph.
        tokenizer: the base model's tokenizer (chat template, left padding).
        backend: a generation backend (:class:`~marft.rollout.backends.GenerationBackend`).
        env_cfg: horizon and reward assignment.
        sampling: sampling parameters (the default action length).
        seed: the run seed: env copy b's samples draw from its own stream
            (:func:`~marft.rollout.streams.env_stream` of ``env_offset + b``), its resets from its
            own problem stream (:func:`~marft.rollout.streams.problem_stream`; in episodic mode
            a group's, that of its first copy).
        episodic: collect whole episodes in groups of ``group_size`` (see the module docstring).
        group_size: G, in episodic mode.
        transcripts_per_iter: finished episodes kept as full conversations per call.
        adapter_of: adapter name per role (default: the role); ``"__base__"`` runs that agent on
            the bare base model (evaluation's per-agent ablation).
        schedule: who acts next (default: the team's, :func:`~marft.team.schedule.schedule_for`).
        env_offset: the global index of the first env copy (a rollout worker's slice of the run).
        branching: episodic mode: nested groups' branching factor per depth
            (:mod:`marft.rollout.nested`); empty: every env copy generates every action.
        generators: a team of several bases: each base's tokenizer and backend (then
            ``tokenizer`` and ``backend`` are the first base's); the rows of a turn are one
            generation call per base.
        critic_base: a team of several bases with a critic: the base it reads. The agents on the
            other bases also have their prompts rendered with its tokenizer
            (``Trajectory.critic_prompts``), and what the critic bootstraps from is rendered with
            it. None: the first base's.
    """

    def __init__(
        self,
        envs: EnvCopies,
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
        branching: tuple[int, ...] = (),
        generators: Generators | None = None,
        critic_base: str | None = None,
    ) -> None:
        self.envs = envs
        self.graph = graph
        self.tokenizer = tokenizer
        self.backend = backend
        self.env_cfg = env_cfg
        self.sampling = sampling
        self.episodic = episodic
        self.group_size = group_size
        self.transcripts_per_iter = transcripts_per_iter
        self.adapter_of = adapter_of or {}
        self.schedule = schedule or schedule_for(graph)
        self.generators = generators or Generators.single(tokenizer, backend, graph.roles)
        # Generation calls one team step may take (call ids are (step * this + turn) * bases +
        # base): a routed step takes at most max_actions turns; a static one as many as its
        # graph's levels; each turn one call per base.
        self._turns_per_step = graph.routing.max_actions if graph.routing is not None else graph.n_agents
        self._bases = len(self.generators.bases)
        self.device = backend.device
        self.prompts = {
            name: PromptEncoder(gen.tokenizer, graph, self.device)
            for name, gen in self.generators.per_base.items()
        }
        self.critic_base = critic_base or self.generators.bases[0]
        self._critic_renders = critic_base is not None and self._bases > 1
        self.env_offset = env_offset
        self.nested = NestedGroups(tuple(branching), env_offset) if branching and episodic else None
        self._streams = [env_stream(seed, env_offset + b) for b in range(len(envs))]
        self._problems = [problem_stream(seed, env_offset + b) for b in range(len(envs))]
        self.episodes = LiveEpisodes.start(
            [env.reset(seed=stream.getrandbits(31)) for env, stream in zip(envs, self._problems, strict=True)]
        )

    @property
    def last_metrics(self) -> dict[str, float]:
        """The sampler's own counters of the last collection: none in process (the env's and the
        collection's counters travel in the trajectory)."""
        return {}

    def close(self) -> None:
        """Nothing runs outside this process."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue collecting exactly, as lists over env copies: random
        streams, live episodes, env states."""
        return {
            "streams": [s.getstate() for s in self._streams],
            "problem_streams": [s.getstate() for s in self._problems],
            **self.episodes.state_dict(),
            "envs": self.envs.states(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["envs"]) != len(self.envs):
            raise ValueError(
                f"the checkpoint holds {len(state['envs'])} env copies but the config asks for "
                f"{len(self.envs)}; resume with the run's env.n_envs"
            )
        for stream, st in zip(self._streams, state["streams"], strict=True):
            stream.setstate(st)
        for stream, st in zip(self._problems, state["problem_streams"], strict=True):
            stream.setstate(st)
        self.episodes.load_state_dict(state)
        self.envs.load_states(state["envs"])

    def _reset_groups(self, problems: list[int] | None = None) -> None:
        G = self.group_size
        seeds = [self._problems[g * G].getrandbits(31) for g in range(len(self.envs) // G)]
        for b, env in enumerate(self.envs):
            if problems is not None:
                self.episodes.restart(b, self.envs.reset_to(b, problems[b]))
            else:
                self.episodes.restart(b, env.reset(seed=seeds[b // G]))

    @torch.no_grad()
    def collect(self, steps: int, problems: list[int] | None = None) -> Trajectory:
        """Run ``steps`` team steps in every env copy (episodic mode: at most ``steps``).

        Args:
            steps: team steps (episodic: the most an episode may take).
            problems: episodic mode only: start env copy b on problem ``problems[b]`` (``reset_to``)
                instead of a seeded draw.
        """
        # A team step takes one acting round, or (routing) up to max_actions when agents act again.
        rounds = self.graph.routing.max_actions if self.graph.routing is not None else 1
        pads = [self.generators.of(r).tokenizer.pad_token_id for r in self.graph.roles]
        buf = TrajectoryBuilder(len(self.envs), steps * rounds, self.graph.n_agents, pads, self.device)
        finished = [False] * len(self.envs)
        if self.episodic:
            self._reset_groups(problems)
        for step in range(steps):
            active = [b for b in range(len(self.envs)) if not finished[b]]
            if not active:
                break
            acts = self._act(step, active, buf)
            with buf.timed("env"):
                results = self.envs.step(active, [outputs_of(acts[b].step) for b in active])
                for b, result in zip(active, results, strict=True):
                    finished[b] = self._step_env(b, acts[b], buf, result)
        self.generators.release()
        return self._assemble(buf)

    def _act(self, step: int, active: list[int], buf: TrajectoryBuilder) -> dict[int, TeamStep]:
        """Generate every turn of team step ``step`` in the active env copies: one batched call
        per turn over every ready (agent, env copy) pair, call id ``step * turns_per_step + turn``
        (env-copy slices line up with one collector). Copy b's step starts at b's next free index
        of the step axis and moves to a new round when an agent acts again, so that a (step,
        agent) holds at most one action and a copy's layout depends only on its own history."""
        keep = self.transcripts_per_iter
        acts = {
            b: TeamStep(
                self.schedule.begin(self.env_offset + b, self.episodes.observations[b], self._streams[b]),
                end=buf.begin_step(b),
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
                    acts[b].end += 1
                    in_round[b] = set()
                in_round[b].update(a.role for a in agents)
                rows.extend((a, b) for a in agents)
            if not rows:
                break
            rows.sort(key=lambda row: row[0].index)  # agents in acting order, env copies ascending
            copies = self._copies(rows)
            leaders = [row for row in rows if row not in copies]
            for k, (base, own) in enumerate(self.generators.split(leaders)):
                buf.call = (step * self._turns_per_step + turn) * self._bases + k
                self._generate_turn(own, acts, buf, base)
            self._take_copies(copies, acts)
        buf.close_steps({b: acts[b].end for b in active})
        return acts

    def _copies(self, rows: list[tuple[Agent, int]]) -> dict[tuple[Agent, int], int]:
        """Nested groups: the rows that take their block leader's action instead of generating,
        each with its leader (an episode's first step only)."""
        if self.nested is None:
            return {}
        out = {}
        for a, b in rows:
            lead = self.nested.leader(b, a.depth)
            if lead != b and self.episodes.lengths[b] == 0:
                out[(a, b)] = lead
        return out

    def _take_copies(self, copies: dict[tuple[Agent, int], int], acts: dict[int, TeamStep]) -> None:
        """Each copy takes its leader's action as its own text (seen by the agents after it); it
        is not an action of its own (no slot: not trained, not counted)."""
        for (a, b), lead in copies.items():
            acts[b].copied.add(len(acts[b].step.actions))
            acts[b].step.record(a, outputs_of(acts[lead].step)[a.role])
            if acts[b].kept is not None:
                acts[b].kept.append(acts[lead].kept[-1] if acts[lead].kept else [])

    def _generate_turn(
        self, rows: list[tuple[Agent, int]], acts: dict[int, TeamStep], buf, base: str
    ) -> None:
        """One batched generation over (agent, env copy) rows of one base, agents in acting order."""
        gen = self.generators.per_base[base]
        with buf.timed("env"):
            fmt = self.graph.message_format
            obs = self.episodes.observations
            convs = [build_messages(a, obs[b], acts[b].step.seen(a), fmt) for a, b in rows]
            prompts = self.prompts[base].encode(convs)
            adapters = [self.adapter_of.get(a.role, a.role) for a, _ in rows]
            limits = [a.max_new_tokens or self.sampling.max_new_tokens for a, _ in rows]
        with buf.timed("generate"):
            keys = draw_keys(self._streams, [b for _, b in rows], self.device)
            out = gen.backend.generate(prompts, adapters, torch.tensor(limits, device=self.device), keys)
        with buf.timed("env"):
            texts = gen.tokenizer.batch_decode(out.response_ids, skip_special_tokens=True)
            words = [max(1, len(x.split())) for x in texts]
            made = ActionRows(
                prompt_ids=prompts.ids,
                prompt_mask=prompts.mask,
                response_ids=out.response_ids,
                response_mask=out.response_mask,
                logprobs=out.logprobs,
                entropy=out.entropy if out.entropy is not None else torch.zeros_like(out.logprobs),
                word_counts=torch.tensor(words, dtype=torch.float32, device=self.device),
            )
            self._record_turn(rows, made, texts, convs, acts, buf)
            if self._critic_renders and base != self.critic_base:  # the same, for the critic's base
                where = [(a.index, b, acts[b].end) for a, b in rows]
                buf.record_critic_prompts(where, self.prompts[self.critic_base].encode(convs))

    def _record_turn(
        self,
        rows: list[tuple[Agent, int]],
        made: ActionRows,
        texts: list[str],
        convs: list[list[dict[str, str]]],
        acts: dict[int, TeamStep],
        buf: TrajectoryBuilder,
    ) -> None:
        """Record one generation call's actions, agent by agent (rows are in acting order)."""
        start = 0
        for agent in self.graph.agents:
            envs = [b for a, b in rows if a is agent]
            if not envs:
                continue
            own = list(range(start, start + len(envs)))
            start += len(envs)
            for t in sorted({acts[b].end for b in envs}):  # env copies in different rounds
                sel = [j for j, b in enumerate(envs) if acts[b].end == t]
                buf.record_action(agent.index, t, [envs[j] for j in sel], made.select([own[j] for j in sel]))
            for j, b in enumerate(envs):
                acts[b].step.record(agent, texts[own[j]].strip())
                acts[b].slots.append((acts[b].end, agent.index))
                if acts[b].kept is not None:
                    acts[b].kept.append(convs[own[j]])

    def _step_env(
        self, b: int, act: TeamStep, buf: TrajectoryBuilder, result: StepResult | Exception
    ) -> bool:
        """Record env copy b's step on its joint action; returns whether it finished (episodic mode)."""
        roles = self.graph.roles
        t = act.end
        acting = [a.role for a in act.step.actions]
        try:
            if isinstance(result, Exception):
                raise result
            r_vec, team_r = team_reward_vector(result.rewards, roles, acting, self.env_cfg.reward_assignment)
        except Exception as e:  # a user env or reward function: fail the episode, not the run
            log.warning(
                "env copy %d raised in step(); its episode is dropped: %s",
                b,
                "".join(traceback.format_exception_only(e)).strip(),
            )
            buf.drop_episode(b, t)
            self._new_episode(b)
            return self.episodic
        own = [r for i, r in enumerate(r_vec) if i not in act.copied]  # copies hold no slot
        buf.end_step(b, t, act.slots, own, team_r, result.answer)
        if self.graph.routing is not None:
            step = act.step
            buf.count_route(route_of(step), step.router_actions, step.invalid, step.cut)
        routed = self.graph.routing is not None
        step_no = self.episodes.lengths[b]
        turn = transcript_step(step_no, act, r_vec, team_r, result, routed) if act.kept is not None else None
        self.episodes.add_step(b, team_r, turn)
        done = result.done or self.episodes.lengths[b] >= self.env_cfg.horizon
        if done and not result.done and not self.episodic:
            # Cut by the horizon, not ended by the env: keep the next observation so that a critic
            # can bootstrap from it (a time limit is not a terminal state).
            buf.cut(b, t, result.observation)
        if not done:
            self.episodes.observations[b] = result.observation
            return False
        self._end_episode(b, t, buf)
        return self.episodic

    def _end_episode(self, b: int, t: int, buf: TrajectoryBuilder) -> None:
        episodes = self.episodes
        buf.end_episode(b, t, episodes.returns[b], episodes.lengths[b])
        keep = self.transcripts_per_iter
        if self.env_offset + b < keep and len(buf.transcripts) < keep:
            buf.transcripts.append(
                {
                    "env": self.env_offset + b,
                    "episode_return": episodes.returns[b],
                    "turns": episodes.turns[b],
                }
            )
        self._new_episode(b)

    def _new_episode(self, b: int) -> None:
        """Env copy b's episode is over: in continuing mode its env resets at once."""
        if self.episodic:
            self.episodes.restart(b)
        else:
            self.episodes.restart(b, self.envs[b].reset(seed=self._problems[b].getrandbits(31)))

    def _assemble(self, buf: TrajectoryBuilder) -> Trajectory:
        with buf.timed("env"):
            cuts = buf.cut_observations
            # what a critic bootstraps from, rendered for the base it reads
            opener = self.prompts[self.critic_base]
            cut_prompts = opener.first_agent_prompts(cuts) if cuts else None
            next_prompts = None if self.episodic else opener.first_agent_prompts(self.episodes.observations)
        return buf.build(
            per_agent_rewards=self.env_cfg.reward_assignment == "per_agent",
            cut_prompts=cut_prompts,
            next_prompts=next_prompts,
            env_metrics=self.envs.pop_metrics(),
            critic_pad=self.generators.per_base[self.critic_base].tokenizer.pad_token_id
            if self._critic_renders
            else None,
        )
