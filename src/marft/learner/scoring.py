"""The scoring phase: what the learner needs from a trajectory that only a model can compute.

From the trajectory's token ids, and as the algorithm declared in :class:`ScoringNeeds`:

* critic features: the bare base's final hidden state (adapters disabled) before each action
  (``[B*T, H]`` per agent) or before each of its tokens (``[B*T, L, H]``), and for the
  observations a critic bootstraps from (after the last step, and at horizon cuts);
* reference log-probs of the sampled tokens (the bare base, for a KL anchor);
* old log-probs recomputed with the learner's own forward (half-precision bases).

Features and reference log-probs come from one base forward per generation turn, over exactly
the rows that were generated together (the trajectory's ``turns``), so they equal what a forward
during sampling would have given. The bare base is frozen, so the features of the observations
after the last step are remembered and reused when the next trajectory starts from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from marft.config import AlgorithmConfig
from marft.learner.batching import micro_batches, rows_of, sequences
from marft.learner.spec import ScoringNeeds
from marft.learner.stats import LogprobGap, ScoreStats
from marft.models.logprobs import SamplingParams
from marft.models.sequences import SequenceBatch
from marft.models.team_model import TeamModel
from marft.rollout.trajectory import AgentActions, Prompts, Trajectory


@dataclass
class Scores:
    """The scoring phase's output for one trajectory (per agent lists in acting order).

    Attributes:
        old_logprobs: ``[B*T, L]`` per agent: the log-probs PPO's ratio starts from (the sampled
            ones, or the learner's recomputation when ``ScoringNeeds.old_logprobs``).
        features: ``[B*T, H]`` (per action) or ``[B*T, L, H]`` (per token) per agent, or None.
        ref_logprobs: ``[B*T, L]`` per agent under the reference policy (0 on padding), or None.
        next_features: ``[B, H]`` features of the observation after the last step, or None.
        cut_features: ``[B, T, H]`` features of the next observation at horizon cuts (0
            elsewhere), or None when there were none.
        entropy: ``[B*T, L]`` per agent from the learner's forward, where old log-probs were
            recomputed (None elsewhere): used when the sampler does not report entropy.
        stats: the gap between the sampler's and the learner's log-probs of the sampled tokens,
            per agent whose old log-probs were recomputed.
    """

    old_logprobs: list[Tensor]
    features: list[Tensor] | None = None
    ref_logprobs: list[Tensor] | None = None
    next_features: Tensor | None = None
    cut_features: Tensor | None = None
    entropy: list[Tensor | None] | None = None
    stats: ScoreStats = field(default_factory=ScoreStats)


@dataclass
class _Turn:
    """Rows of one generation call: per agent (acting order), its row indices ``b * T + t``;
    ``first``: the trajectory's first call."""

    first: bool
    members: list[tuple[int, Tensor]]


class Scorer:
    """Computes :class:`Scores` with the team model.

    Args:
        model: the team model.
        needs: what to compute (declared by the algorithm and the config).
        sampling: the sampling distribution (reference and recomputed log-probs use it too).
        algorithm: micro-batch limits for recomputed old log-probs.
        all_roles: recompute every agent's old log-probs (a separate sampling engine: the gap is
            logged for all), not only those trained this iteration.
    """

    def __init__(
        self,
        model: TeamModel,
        needs: ScoringNeeds,
        sampling: SamplingParams,
        algorithm: AlgorithmConfig,
        all_roles: bool = False,
    ) -> None:
        self.model = model
        self.needs = needs
        self.sampling = sampling
        self.algorithm = algorithm
        self.all_roles = all_roles
        self._next: tuple[Prompts, Tensor] | None = None  # last bootstrap prompts and their features

    @torch.no_grad()
    def score(self, traj: Trajectory, recompute_roles: list[str] | None = None) -> Scores:
        """Score a trajectory; ``recompute_roles``: agents whose old log-probs to recompute (default:
        all, when the needs ask for it)."""
        needs = self.needs
        features, ref = (
            self._score_turns(traj) if needs.critic_features != "none" or needs.ref_logprobs else (None, None)
        )
        scores = Scores(old_logprobs=[a.logprobs for a in traj.agents], features=features, ref_logprobs=ref)
        if needs.critic_features != "none":
            scores.next_features = self._next_features(traj)
            scores.cut_features = self._cut_features(traj)
        if needs.old_logprobs:
            roles = self.model.roles if recompute_roles is None or self.all_roles else recompute_roles
            scores.entropy = [None] * len(traj.agents)
            for n, role in enumerate(self.model.roles):
                if role in roles:
                    scores.old_logprobs[n], scores.entropy[n] = self._recompute(role, traj, n)
                    gap = logprob_gap(traj.agents[n], scores.old_logprobs[n])
                    if gap is not None:
                        scores.stats.logprob_gap[role] = gap
        return scores

    @torch.no_grad()
    def behaviour_logprobs(
        self, traj: Trajectory, behaviour: Mapping[str, Mapping[str, Tensor]]
    ) -> Trajectory:
        """``traj`` with each agent whose adapter is in ``behaviour`` given the log-probs of its
        sampled tokens under those weights (the adapter versions that sampled it) in place of the
        sampler's; the model's adapters are restored after.

        Args:
            traj: a trajectory sampled (in part) with older adapters.
            behaviour: adapter -> its PEFT tensors at the version that sampled ``traj``.
        """
        if not behaviour:
            return traj
        names = list(behaviour)
        current = {
            a: {k: v.clone() for k, v in t.items()} for a, t in self.model.adapter_weights(names).items()
        }
        agents = list(traj.agents)
        self.model.set_adapter_weights(behaviour)
        try:
            for n, role in enumerate(self.model.roles):
                if self.model.adapter_name(role) in behaviour:
                    logprobs, _ = self._recompute(role, traj, n)
                    agents[n] = dataclasses.replace(agents[n], logprobs=logprobs)
        finally:
            self.model.set_adapter_weights(current)
        return dataclasses.replace(traj, agents=agents)

    # ------------------------------------------------------------------------------ base forwards

    def _turns(self, traj: Trajectory) -> list[_Turn]:
        """The generation calls of a trajectory in order, each as its rows per agent."""
        B, T, N = traj.shape
        calls = traj.turns
        out = []
        for k in torch.unique(calls[calls >= 0]).tolist():
            members = []
            for n in range(N):
                where = (calls[:, :, n] == k).nonzero()  # (b, t) pairs, env copies ascending
                if where.numel():
                    members.append((n, where[:, 0] * T + where[:, 1]))
            out.append(_Turn(first=not out, members=members))
        return out

    def _model_of(self, members: list[tuple[int, Tensor]]) -> TeamModel:
        """The base a turn's agents ran on (a generation call is on one base)."""
        return self.model.of(self.model.roles[members[0][0]])

    def _batch(self, traj: Trajectory, members: list[tuple[int, Tensor]]) -> SequenceBatch:
        """The rows of one turn as they were generated: agents in acting order, padded together."""
        pad = self._model_of(members).tokenizer.pad_token_id
        parts = [rows_of(sequences(traj.agents[n]), rows) for n, rows in members]
        P = max(p.prompt_ids.shape[1] for p in parts)
        L = max(p.response_ids.shape[1] for p in parts)

        def cat(name: str, width: int, value: int, left: bool) -> Tensor:
            xs = [getattr(p, name) for p in parts]
            return torch.cat(
                [
                    F.pad(x, (width - x.shape[1], 0) if left else (0, width - x.shape[1]), value=value)
                    for x in xs
                ]
            )

        return SequenceBatch(
            cat("prompt_ids", P, pad, True),
            cat("prompt_mask", P, 0, True),
            cat("response_ids", L, pad, False),
            cat("response_mask", L, 0, False),
        ).trimmed()

    def _score_turns(self, traj: Trajectory) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        """Features and reference log-probs of every action, one base forward per turn."""
        needs = self.needs
        B, T, N = traj.shape
        H = self.model.hidden_size
        device = traj.rewards.device
        feats: list[Tensor] | None = None
        if needs.critic_features == "action":
            feats = [torch.zeros(B * T, H, device=device) for _ in range(N)]
        elif needs.critic_features == "token":
            feats = [torch.zeros(B * T, a.response_ids.shape[1], H, device=device) for a in traj.agents]
        ref = [torch.zeros_like(a.logprobs) for a in traj.agents] if needs.ref_logprobs else None
        critic = self.model.critic_model
        for turn in self._turns(traj):
            model = self._model_of(turn.members)
            # an agent on another base than the critic's: its features come from its prompts
            # rendered for the critic's base (below), its base forward gives only the reference
            kind = needs.critic_features if model is critic else "none"
            if kind == "none" and not needs.ref_logprobs:
                continue
            batch = self._batch(traj, turn.members)
            f, r = self._reuse_or_score(batch, turn, model, kind)
            start = 0
            for n, rows in turn.members:
                sl = slice(start, start + len(rows))
                start += len(rows)
                if feats is not None and f is not None:
                    feats[n][rows, : f.shape[1]] = f[sl]  # per token: padding tokens stay 0
                if ref is not None:
                    ref[n][rows, : r.shape[1]] = r[sl]
        if feats is not None and traj.critic_prompts is not None:
            self._critic_base_features(traj, feats)
        return feats, ref

    def _critic_base_features(self, traj: Trajectory, feats: list[Tensor]) -> None:
        """Fill ``feats`` (``[B*T, H]`` per agent) of the agents on another base than the critic's,
        from their prompts rendered for the critic's base (a team of several bases)."""
        acted = traj.turns.flatten(0, 1) >= 0  # [B*T, N]
        for n, prompts in enumerate(traj.critic_prompts or []):
            if prompts is None:
                continue
            rows = acted[:, n].nonzero().squeeze(-1)
            if rows.numel():
                feats[n][rows] = self._features(Prompts(prompts.ids[rows], prompts.mask[rows]))

    def _reuse_or_score(
        self, batch: SequenceBatch, turn: _Turn, model: TeamModel, kind: str
    ) -> tuple[Tensor | None, Tensor | None]:
        """One forward of ``model``'s base over a turn (features of ``kind``); the first agent's
        rows of a trajectory's first turn reuse the remembered bootstrap features when they are the
        same prompts."""
        needs = self.needs
        cached = self._next
        _, rows = turn.members[0]
        if cached is not None and turn.first and kind == "action" and not needs.ref_logprobs:
            n = len(rows)
            own = SequenceBatch(
                batch.prompt_ids[:n], batch.prompt_mask[:n], batch.response_ids[:n], batch.response_mask[:n]
            )
            own = own.trimmed()
            prompts, features = cached
            if torch.equal(own.prompt_ids, prompts.ids) and torch.equal(own.prompt_mask, prompts.mask):
                if n == batch.prompt_ids.shape[0]:
                    return features, None
                rest = SequenceBatch(
                    *(
                        x[n:]
                        for x in (
                            batch.prompt_ids,
                            batch.prompt_mask,
                            batch.response_ids,
                            batch.response_mask,
                        )
                    )
                )
                f, _ = self._score_batch(rest, "action", False, model)
                return torch.cat([features, f], dim=0), None
        return self._score_batch(batch, kind, needs.ref_logprobs, model)

    def _score_batch(
        self, batch: SequenceBatch, kind: str, ref: bool, model: TeamModel | None = None
    ) -> tuple[Tensor | None, Tensor | None]:
        """:meth:`TeamModel.score_reference` of ``model`` (default: the critic's base) on
        ``batch`` in micro-batches of at most
        ``micro_batch_tokens`` padded tokens, rows sorted by length so that rows of similar length
        go together (less padding to compute); results in ``batch``'s row order."""
        sp, budget = self.sampling, self.algorithm.micro_batch_tokens
        model = model or self.model.critic_model
        S, L = batch.response_ids.shape
        if budget <= 0:
            return model.score_reference(batch, kind, ref, sp)
        feats = logprobs = None
        for idx in micro_batches(torch.arange(S, device=batch.prompt_ids.device), batch, S, budget):
            f, r = model.score_reference(rows_of(batch, idx), kind, ref, sp)
            if f is not None:
                if feats is None:
                    feats = f.new_zeros(S, L, f.shape[-1]) if kind == "token" else f.new_zeros(S, f.shape[-1])
                if kind == "token":
                    feats[idx, : f.shape[1]] = f
                else:
                    feats[idx] = f
            if r is not None:
                logprobs = r.new_zeros(S, L) if logprobs is None else logprobs
                logprobs[idx, : r.shape[1]] = r
        return feats, logprobs

    def _features(self, prompts: Prompts) -> Tensor:
        """``[S, H]`` critic features of observations, micro-batched like :meth:`_score_batch`."""
        empty = prompts.ids[:, :0]
        batch = SequenceBatch(prompts.ids, prompts.mask, empty, empty).trimmed()
        feats, _ = self._score_batch(batch, "action", False)
        return feats

    def _next_features(self, traj: Trajectory) -> Tensor | None:
        if traj.next_prompts is None:
            return None
        prompts = traj.next_prompts
        features = self._features(prompts)
        self._next = (prompts, features)
        return features

    def _cut_features(self, traj: Trajectory) -> Tensor | None:
        if traj.cut_prompts is None:
            return None
        B, T, _ = traj.shape
        feats = self._features(traj.cut_prompts)
        out = torch.zeros(B, T, feats.shape[-1], device=feats.device)
        out[traj.cut_index[:, 0], traj.cut_index[:, 1]] = feats
        return out

    # ------------------------------------------------------------------------------ old log-probs

    def _recompute(self, role: str, traj: Trajectory, n: int) -> tuple[Tensor, Tensor]:
        """Old log-probs from the learner's own forward (the agent's adapter, no grad, eval mode).

        In half precision the sampler's KV-cached, mixed-adapter forward and the learner's full
        forward round differently, so the PPO ratio would not start at 1; this costs one forward.
        """
        cfg, sp = self.algorithm, self.sampling
        actions = traj.agents[n]
        seq = sequences(actions)
        out, ent = torch.zeros_like(actions.logprobs), torch.zeros_like(actions.logprobs)
        model = self.model.of(role)
        with model.adapter(role):
            model.policy.eval()
            idx_all = torch.nonzero(seq.response_mask.sum(-1) > 0).squeeze(-1)  # finished envs: no tokens
            if idx_all.numel() == 0:  # it never acted (a routed expert no router chose)
                return out, ent
            for idx in micro_batches(idx_all, seq, cfg.micro_batch_size, cfg.micro_batch_tokens):
                lp, e = model.action_logprobs(rows_of(seq, idx), sp)
                out[idx, : lp.shape[1]] = lp
                ent[idx, : e.shape[1]] = e
        return out, ent


def logprob_gap(actions: AgentActions, learner_logprobs: Tensor) -> LogprobGap | None:
    """Mean and max absolute difference between the sampler's and the learner's log-probs of the
    sampled tokens of one agent (real tokens only; None without any)."""
    real = actions.response_mask.bool()
    if not real.any():
        return None
    gap = (actions.logprobs - learner_logprobs).abs()[real]
    return LogprobGap(mean=float(gap.mean()), max=float(gap.max()))
