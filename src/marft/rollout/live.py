"""Live tasks: the team run on tasks that come and go, batched like training (``marft run``,
``marft serve``).

A :class:`LiveBatcher` holds the tasks in flight. Each :meth:`~LiveBatcher.step` admits the tasks
that arrived since the last one, asks every task's team step which agents are ready (the team's
:class:`~marft.team.schedule.Schedule`: the static graph's levels, or routing), and generates every
ready (agent, task) pair in **one** mixed-adapter call per base, one adapter per row, exactly as
the collector batches env copies. Tasks at different points of the graph share the call too, so a task
that arrives while others run joins at the next generation call. Each finished action is handed to
the task's ``on_message`` at once; a task whose step has no agent ready is done.

A task is one team step on the env's rendering of the task's text
(:class:`~marft.envs.capabilities.TaskEnv`): the env's later steps need what only training data
holds (an answer key, tests), so ``env.horizon`` beyond 1 is not run here.

Thread use: :meth:`~LiveBatcher.submit` and :meth:`~LiveBatcher.cancel` may be called from any
thread; :meth:`~LiveBatcher.step` from one thread at a time (a server's worker).
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from marft.envs.base import Observation
from marft.rollout.backends import GenerationBackend
from marft.rollout.generators import Generators
from marft.rollout.prompting import PromptEncoder
from marft.rollout.streams import random_keys
from marft.team.graph import Agent, TeamGraph
from marft.team.prompts import build_messages
from marft.team.schedule import Action, Schedule, Step, route_of, schedule_for


@dataclass(frozen=True)
class AgentMessage:
    """One agent's action in a live task.

    Attributes:
        role: the agent.
        text: what it wrote (decoded, special tokens dropped, stripped).
        tokens: tokens it generated (its end-of-turn token included).
        prompt_tokens: tokens of its prompt (the chat template over its messages).
        turn: the generation round of the task it acted in (0 first).
        cut: it reached its token limit before ending its turn.
    """

    role: str
    text: str
    tokens: int
    prompt_tokens: int
    turn: int
    cut: bool


@dataclass
class TeamReply:
    """A finished (or cancelled) live task.

    Attributes:
        messages: every action, in acting order.
        answer: the graded agent's last message (a team without a graded agent: the last one).
        answer_role: who wrote it.
        route: the route taken (``planner>solver``; routed teams may revisit agents).
        tokens: generated tokens per role.
        finish_reason: ``stop``, ``length`` (the answer was cut at its limit), ``cancelled`` or
            ``error`` (generation failed: :attr:`LiveTask.error` says why).
    """

    messages: list[AgentMessage]
    answer: str
    answer_role: str
    route: str
    tokens: dict[str, int]
    finish_reason: str


MessageCallback = Callable[[AgentMessage], None]
DoneCallback = Callable[[TeamReply], None]


class _SoloStep:
    """One agent alone on the task (``team/ROLE``): it acts once and sees no other agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.actions: list[Action] = []
        self._turn = -1

    def ready(self) -> list[Agent]:
        self._turn += 1
        return [] if self.actions else [self.agent]

    def seen(self, agent: Agent) -> list[tuple[str, str]]:
        return []

    def record(self, agent: Agent, text: str) -> None:
        self.actions.append(Action(agent.role, text, turn=self._turn))


@dataclass(eq=False)
class LiveTask:
    """A task in flight: its observation, its team step, what it has produced so far.

    Attributes:
        id: a number unique within the batcher.
        observation: what the env shows the team for the task.
        step: the team step (the schedule's, or one agent alone).
        max_tokens: a cap on every action's length (None: each agent's own limit).
        on_message: called with each action as soon as it is decoded (on the stepping thread).
        on_done: called once with the reply when the task is over (also when cancelled).
    """

    id: int
    observation: Observation
    step: Step
    max_tokens: int | None = None
    on_message: MessageCallback | None = None
    on_done: DoneCallback | None = None
    messages: list[AgentMessage] = field(default_factory=list)
    ready: list[Agent] = field(default_factory=list)
    cancelled: bool = False
    error: str | None = None
    reply: TeamReply | None = None


class LiveBatcher:
    """Runs live tasks through the team, every ready agent of every task in one generation call.

    Args:
        graph: the team.
        tokenizer: the base model's tokenizer (chat template, decoding).
        backend: a generation backend (one adapter per row).
        max_new_tokens: the action length of agents without their own ``max_new_tokens``.
        adapter_of: adapter name per role (``"__base__"``: that agent on the bare base model).
        max_tasks: tasks in flight at once; later ones wait in arrival order.
        eos_ids: the tokens that end a turn (an action that ends without one at its limit is cut);
            a team of several bases: per agent, its base's.
        seed: seeds the random routers' choices (token draws use fresh keys from torch's RNG).
        generators: a team of several bases: each base's tokenizer and backend (then
            ``tokenizer`` and ``backend`` are the first base's).
    """

    def __init__(
        self,
        graph: TeamGraph,
        tokenizer,
        backend: GenerationBackend,
        max_new_tokens: int,
        adapter_of: dict[str, str] | None = None,
        max_tasks: int = 16,
        eos_ids: tuple[int, ...] | dict[str, tuple[int, ...]] = (),
        seed: int = 0,
        generators: Generators | None = None,
    ) -> None:
        self.graph = graph
        self.tokenizer = tokenizer
        self.backend = backend
        self.max_new_tokens = max_new_tokens
        self.adapter_of = adapter_of or {}
        self.max_tasks = max_tasks
        roles = graph.roles
        self.eos_of = {r: set(eos_ids[r] if isinstance(eos_ids, dict) else eos_ids) for r in roles}
        self.schedule: Schedule = schedule_for(graph)
        self.generators = generators or Generators.single(tokenizer, backend, roles)
        self.prompts = {
            name: PromptEncoder(gen.tokenizer, graph, gen.backend.device)
            for name, gen in self.generators.per_base.items()
        }
        self._rng = random.Random(seed)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._waiting: list[LiveTask] = []
        self.live: list[LiveTask] = []
        self.calls = 0
        """Generation calls made so far."""
        self.rows = 0
        """Rows generated so far (actions)."""

    def submit(
        self,
        observation: Observation,
        solo: str | None = None,
        max_tokens: int | None = None,
        on_message: MessageCallback | None = None,
        on_done: DoneCallback | None = None,
    ) -> LiveTask:
        """Queue a task; it joins at the next :meth:`step`. ``solo`` names one agent that answers
        alone (KeyError for a role the team does not have)."""
        if solo is not None:
            step: Step = _SoloStep(self.graph.agent(solo))
        else:
            step = self.schedule.begin(0, observation, random.Random(self._rng.getrandbits(31)))
        with self._lock:
            task = LiveTask(next(self._ids), observation, step, max_tokens, on_message, on_done)
            self._waiting.append(task)
        return task

    def cancel(self, task: LiveTask) -> None:
        """Stop a task (its client left): it leaves the batch before the next generation call."""
        task.cancelled = True

    def fail_all(self, error: str) -> None:
        """A generation call raised: end every task in flight or waiting with ``error``."""
        with self._lock:
            tasks = self.live + self._waiting
        for task in tasks:
            task.error = error
            task.cancelled = True
        self._finish()

    @property
    def pending(self) -> int:
        """Tasks in flight or waiting."""
        with self._lock:
            return len(self.live) + len(self._waiting)

    def _admit(self) -> None:
        with self._lock:
            room = max(0, self.max_tasks - len(self.live))
            new, self._waiting = self._waiting[:room], self._waiting[room:]
        for task in new:
            task.ready = task.step.ready()
            self.live.append(task)

    def _finish(self) -> None:
        """Tasks with no agent ready, or cancelled, are over: hand their replies out."""
        done = [t for t in self.live if t.cancelled or not t.ready]
        self.live = [t for t in self.live if not (t.cancelled or not t.ready)]
        with self._lock:
            dropped = [t for t in self._waiting if t.cancelled]
            self._waiting = [t for t in self._waiting if not t.cancelled]
        for task in done + dropped:
            task.reply = self._reply(task)
            if task.on_done is not None:
                task.on_done(task.reply)

    def _reply(self, task: LiveTask) -> TeamReply:
        graded = {a.role for a in self.graph.agents if a.graded}
        messages = task.messages
        last = next((m for m in reversed(messages) if m.role in graded), messages[-1] if messages else None)
        tokens: dict[str, int] = {}
        for m in messages:
            tokens[m.role] = tokens.get(m.role, 0) + m.tokens
        reason = "length" if last is not None and last.cut else "stop"
        if task.cancelled:
            reason = "error" if task.error is not None else "cancelled"
        return TeamReply(
            messages=list(messages),
            answer=last.text if last else "",
            answer_role=last.role if last else "",
            route=route_of(task.step),
            tokens=tokens,
            finish_reason=reason,
        )

    @torch.no_grad()
    def step(self) -> bool:
        """One generation call over every ready agent of every live task; whether tasks remain
        (in flight or waiting)."""
        self._finish()  # cancelled tasks free their places first
        self._admit()
        self._finish()
        rows = sorted(((a, t) for t in self.live for a in t.ready), key=lambda row: (row[0].index, row[1].id))
        if rows:
            for base, own in self.generators.split(rows):
                self._generate(own, base)
            for task in {t.id: t for _, t in rows}.values():
                task.ready = task.step.ready()
            self._finish()
        return self.pending > 0

    def _generate(self, rows: list[tuple[Agent, LiveTask]], base: str) -> None:
        """One generation call on ``base`` over its rows."""
        own = self.generators.per_base[base]
        convs = [build_messages(a, t.observation, t.step.seen(a), self.graph.message_format) for a, t in rows]
        prompts = self.prompts[base].encode(convs)
        adapters = [self.adapter_of.get(a.role, a.role) for a, _ in rows]
        limits = [self._limit(a, t) for a, t in rows]
        device = own.backend.device
        gen = own.backend.generate(
            prompts, adapters, torch.tensor(limits, device=device), random_keys(len(rows)).to(device)
        )
        texts = own.tokenizer.batch_decode(gen.response_ids, skip_special_tokens=True)
        lengths = gen.response_mask.sum(1).tolist()
        self.calls += 1
        self.rows += len(rows)
        final = (gen.response_mask.sum(1, keepdim=True) - 1).clamp(min=0)
        ends = gen.response_ids.gather(1, final)[:, 0].tolist()  # each row's last real token
        prompt_lengths = prompts.mask.sum(1).tolist()
        for i, (agent, task) in enumerate(rows):
            text = texts[i].strip()
            task.step.record(agent, text)
            cut = lengths[i] >= limits[i] and ends[i] not in self.eos_of[agent.role]
            turn = task.step.actions[-1].turn
            message = AgentMessage(agent.role, text, int(lengths[i]), int(prompt_lengths[i]), turn, cut)
            task.messages.append(message)
            if task.on_message is not None and not task.cancelled:
                task.on_message(message)

    def _limit(self, agent: Agent, task: LiveTask) -> int:
        limit = agent.max_new_tokens or self.max_new_tokens
        return min(limit, task.max_tokens) if task.max_tokens else limit

    def run(
        self, observations: list[Observation], on_message: MessageCallback | None = None
    ) -> list[TeamReply]:
        """Run these tasks to the end, all together; their replies in order (``marft run``)."""
        tasks = [self.submit(o, on_message=on_message) for o in observations]
        while self.step():
            pass
        return [t.reply for t in tasks if t.reply is not None]
