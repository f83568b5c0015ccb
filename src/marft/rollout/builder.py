"""What one collection gathers, step by step, before it becomes a :class:`Trajectory`.

The collector tells the :class:`TrajectoryBuilder` what happened, in the order it happens: a team
step begins in an env copy (:meth:`~TrajectoryBuilder.begin_step`), agents act in generation calls
(:meth:`~TrajectoryBuilder.record_action`, rows of :class:`ActionRows`), the env steps on the
joint action (:meth:`~TrajectoryBuilder.end_step`), an episode ends, is cut by the horizon or is
dropped. :meth:`~TrajectoryBuilder.build` then stacks it all into tensors. Each column's padding
value is declared beside the column, in :class:`ActionRows`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from marft.envs.base import Observation
from marft.rollout.trajectory import AgentActions, Prompts, Trajectory, answer_id, pad_last, pad_stack

PAD = -1.0
"""The fill value that stands for the tokenizer's pad token id (known only at run time)."""


def _column(fill: float, dtype: torch.dtype, left: bool = False) -> Any:
    """A column of :class:`ActionRows`: what pads it where an agent did not act, its dtype, and
    whether its padding goes on the left (prompts are left-padded)."""
    return field(metadata={"fill": fill, "dtype": dtype, "left": left})


@dataclass
class ActionRows:
    """Some actions of one agent in one generation call, a row per env copy.

    Attributes:
        prompt_ids: ``[R, P]`` the prompts, left-padded.
        prompt_mask: ``[R, P]``.
        response_ids: ``[R, L]`` the sampled tokens, right-padded.
        response_mask: ``[R, L]``.
        logprobs: ``[R, L]`` the sampled tokens' log-probs under the sampling distribution.
        entropy: ``[R, L]`` the sampling distribution's entropy at each token.
        word_counts: ``[R]`` words of each decoded action (at least 1).
    """

    prompt_ids: Tensor = _column(PAD, torch.long, left=True)
    prompt_mask: Tensor = _column(0, torch.long, left=True)
    response_ids: Tensor = _column(PAD, torch.long)
    response_mask: Tensor = _column(0, torch.long)
    logprobs: Tensor = _column(0.0, torch.float32)
    entropy: Tensor = _column(0.0, torch.float32)
    word_counts: Tensor = _column(1.0, torch.float32)

    def select(self, rows: list[int]) -> ActionRows:
        """These actions at ``rows`` only."""
        return ActionRows(**{f.name: getattr(self, f.name)[rows] for f in COLUMNS})


COLUMNS = dataclasses.fields(ActionRows)


def _fills(pad: int) -> dict[str, float]:
    """Each column's padding value, token columns padded with ``pad``."""
    return {f.name: pad if f.metadata["fill"] == PAD else f.metadata["fill"] for f in COLUMNS}


class TrajectoryBuilder:
    """One collection's record of ``B`` env copies, ``N`` agents and up to ``steps`` steps
    (team steps x the most rounds a team step may take).

    Per agent and step it keeps ``[B, ...]`` tensors (rows of env copies that did not act are
    padding), and per env copy and step plain lists of rewards, dones and who acted, turned into
    tensors once at the end (element writes into tensors cost far more than into lists).

    Args:
        B, steps, N: env copies, the step axis's capacity, agents.
        pad_id: the tokenizer's pad token id (the fill of token columns), or one per agent (a team
            of several bases: each agent's base's tokenizer).
        device: where the action tensors live.
    """

    def __init__(self, B: int, steps: int, N: int, pad_id: int | Sequence[int], device: torch.device) -> None:
        self.B = B
        self.steps = steps
        self.N = N
        self.device = device
        pads = [pad_id] * N if isinstance(pad_id, int) else list(pad_id)
        self._fills = [
            {f.name: pad if f.metadata["fill"] == PAD else f.metadata["fill"] for f in COLUMNS}
            for pad in pads
        ]  # per agent
        self._actions: list[dict[str, list[Tensor]]] = [defaultdict(list) for _ in range(N)]
        self._rewards = [[[0.0] * N for _ in range(steps)] for _ in range(B)]
        self._acted = [[[0.0] * N for _ in range(steps)] for _ in range(B)]
        self._team_rewards = [[0.0] * steps for _ in range(B)]
        self._dones = [[0.0] * steps for _ in range(B)]
        self._step_ends = [[0.0] * steps for _ in range(B)]
        self._turns = torch.full((B, steps, N), -1, dtype=torch.long)
        self._answers = torch.full((B, steps), -1, dtype=torch.long)
        self._next_step = [0] * B
        self._cuts: list[tuple[int, int, Observation]] = []
        self._critic: list[list[tuple[int, list[int], Prompts]]] = [[] for _ in range(N)]
        self.taken = 0
        """Steps of the step axis used so far."""
        self.call = 0
        """The id of the generation call being recorded."""
        self.failed = 0
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.transcripts: list[dict[str, Any]] = []
        self.timings: dict[str, float] = defaultdict(float)
        self.routes: list[str] = []
        self.route_metrics: dict[str, float] = defaultdict(float)

    # ------------------------------------------------------------------------------ actions

    def begin_step(self, b: int) -> int:
        """The step index where env copy b's next team step begins."""
        return self._next_step[b]

    def close_steps(self, ends: dict[int, int]) -> None:
        """Team steps ended at these step indices (env copy -> last index of its step)."""
        for b, end in ends.items():
            self._next_step[b] = end + 1
        self.taken = max(self._next_step)

    def record_action(self, agent: int, t: int, envs: list[int], rows: ActionRows) -> None:
        """Agent ``agent``'s actions at step t in env copies ``envs`` (a row each), made in
        generation call :attr:`call`. An agent may act in different calls in different env copies
        (a schedule that routes): its rows of one step are merged."""
        index = torch.tensor(envs, device=self.device)
        store = self._actions[agent]
        self._pad_to(store, t, agent)
        fills = self._fills[agent]
        for column in COLUMNS:
            name = column.name
            full = self._scatter(index, getattr(rows, name), fills[name])
            if len(store[name]) == t:
                store[name].append(full)
                continue
            merged = store[name][t].clone()
            if full.dim() > 1:
                width = max(full.shape[-1], merged.shape[-1])
                left = column.metadata["left"]
                merged = pad_last(merged, width, fills[name], left)
                full = pad_last(full, width, fills[name], left)
            merged[index] = full[index]
            store[name][t] = merged
        self._turns[envs, t, agent] = self.call

    def record_critic_prompts(self, where: list[tuple[int, int, int]], prompts: Prompts) -> None:
        """Prompts of one generation call rendered for the critic's base (a team of several bases;
        recorded beside :meth:`record_action`): row i is agent ``where[i][0]``'s in env copy
        ``where[i][1]`` at step ``where[i][2]``."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (agent, _, t) in enumerate(where):
            groups[(agent, t)].append(i)
        for (agent, t), rows in groups.items():
            envs = [where[i][1] for i in rows]
            self._critic[agent].append((t, envs, Prompts(prompts.ids[rows], prompts.mask[rows])))

    def critic_prompts(self, pad_id: int) -> list[Prompts | None]:
        """Per agent, its recorded critic prompts as ``[B*T, P]`` over the ``taken`` steps
        (left-padded with ``pad_id``), or None where none were recorded."""
        T = self.taken
        out: list[Prompts | None] = []
        for records in self._critic:
            if not records:
                out.append(None)
                continue
            P = max(p.ids.shape[1] for _, _, p in records)
            ids = torch.full((self.B * T, P), pad_id, dtype=torch.long, device=self.device)
            mask = torch.zeros_like(ids)
            for t, envs, p in records:  # one entry per generation call
                rows = torch.tensor(envs, device=self.device) * T + t
                ids[rows, P - p.ids.shape[1] :] = p.ids
                mask[rows, P - p.mask.shape[1] :] = p.mask
            out.append(Prompts(ids, mask))
        return out

    def _scatter(self, index: Tensor, values: Tensor, fill: float) -> Tensor:
        """Place ``values`` (one per acting env copy) at ``index`` of a ``[B, ...]`` tensor."""
        if values.shape[0] == self.B:
            return values
        out = torch.full((self.B, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
        out[index] = values
        return out

    def _pad_to(self, store: dict[str, list[Tensor]], t: int, agent: int) -> None:
        """Give an agent all-padding entries up to step t (exclusive), so steps stay aligned."""
        while len(store["word_counts"]) < t:
            for column in COLUMNS:
                name = column.name
                shape = (self.B,) if name == "word_counts" else (self.B, 1)
                fill = torch.full(
                    shape, self._fills[agent][name], dtype=column.metadata["dtype"], device=self.device
                )
                store[name].append(fill)

    # ------------------------------------------------------------------------------ env steps

    def end_step(
        self,
        b: int,
        t: int,
        slots: list[tuple[int, int]],
        rewards: list[float],
        team: float,
        answer: str | None = None,
    ) -> None:
        """The env stepped env copy b's team step (ending at step t) on the joint action: each
        action's ``(step, agent)`` slot gets its reward, and the step the team's reward and the
        env's extracted ``answer`` (as :func:`~marft.rollout.trajectory.answer_id`)."""
        self._answers[b, t] = answer_id(answer)
        for (tt, n), r in zip(slots, rewards, strict=True):
            self._rewards[b][tt][n] = r
            self._acted[b][tt][n] = 1.0
        self._team_rewards[b][t] = team
        self._step_ends[b][t] = 1.0

    def end_episode(self, b: int, t: int, episode_return: float, length: int) -> None:
        """Env copy b's episode ended after step t."""
        self._dones[b][t] = 1.0
        self.episode_returns.append(episode_return)
        self.episode_lengths.append(length)

    def drop_episode(self, b: int, t: int) -> None:
        """Env copy b's env raised at step t: its episode is dropped (counted as failed)."""
        self.failed += 1
        self._dones[b][t] = 1.0

    def cut(self, b: int, t: int, observation: Observation) -> None:
        """``env.horizon`` cut env copy b's episode after step t; ``observation`` is what a critic
        bootstraps from (a time limit is not a terminal state)."""
        self._cuts.append((b, t, observation))

    def count_route(self, route: str, router_actions: int, invalid: int, cut: int) -> None:
        """Routing teams: one team step's route and its router counters."""
        self.routes.append(route)
        self.route_metrics["router_actions"] += router_actions
        self.route_metrics["route_invalid"] += invalid
        self.route_metrics["route_cut"] += cut

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Add the seconds of the block to ``timings[part]`` (``generate``, ``env``)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[part] += time.perf_counter() - t0

    @property
    def cut_observations(self) -> list[Observation]:
        """The observations after each horizon cut, in the order they happened."""
        return [o for _, _, o in self._cuts]

    # ------------------------------------------------------------------------------ the result

    def agent_actions(self, agent: int) -> AgentActions:
        """One agent's actions over the ``taken`` steps (padding where it did not act)."""
        store = self._actions[agent]
        self._pad_to(store, self.taken, agent)

        def stacked(name: str, left: bool = False) -> Tensor:
            return pad_stack(store[name], self._fills[agent][name], left=left).flatten(0, 1)

        return AgentActions(
            prompt_ids=stacked("prompt_ids", left=True),
            prompt_mask=stacked("prompt_mask", left=True),
            response_ids=stacked("response_ids"),
            response_mask=stacked("response_mask"),
            logprobs=stacked("logprobs"),
            entropy=stacked("entropy"),
            word_counts=torch.stack(store["word_counts"], 1).flatten(0, 1),
        )

    def build(
        self,
        per_agent_rewards: bool,
        cut_prompts: Prompts | None,
        next_prompts: Prompts | None,
        env_metrics: dict[str, float],
        critic_pad: int | None = None,
    ) -> Trajectory:
        """The trajectory of the ``taken`` steps, on the builder's device (with the recorded critic
        prompts, padded with ``critic_pad``, when that is given)."""
        T, device = self.taken, self.device
        cut_index = torch.tensor([[b, t] for b, t, _ in self._cuts], dtype=torch.long).reshape(-1, 2)
        truncated = torch.zeros(self.B, self.steps)
        truncated[cut_index[:, 0], cut_index[:, 1]] = 1.0
        return Trajectory(
            agents=[self.agent_actions(n) for n in range(self.N)],
            rewards=torch.tensor(self._rewards)[:, :T].to(device),
            team_rewards=torch.tensor(self._team_rewards)[:, :T].to(device),
            dones=torch.tensor(self._dones)[:, :T].to(device),
            action_mask=torch.tensor(self._acted)[:, :T].to(device),
            turns=self._turns[:, :T].to(device),
            answers=self._answers[:, :T].to(device),
            step_ends=torch.tensor(self._step_ends)[:, :T].to(device),
            truncated=truncated[:, :T].to(device),
            cut_index=cut_index.to(device),
            cut_prompts=cut_prompts,
            next_prompts=next_prompts,
            critic_prompts=self.critic_prompts(critic_pad) if critic_pad is not None else None,
            per_agent_rewards=per_agent_rewards,
            failed_episodes=self.failed,
            episode_returns=self.episode_returns,
            episode_lengths=self.episode_lengths,
            transcripts=self.transcripts,
            timings=dict(self.timings),
            env_metrics=env_metrics,
            routes=self.routes,
            route_metrics=dict(self.route_metrics),
        )
