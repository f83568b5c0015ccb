"""The learner: one iteration's update as three steps on a scored trajectory.

1. :meth:`Learner.targets` (no side effects): the critic's values, the KL penalty as one explicit
   term, the registered advantage estimator, and per agent its advantages;
2. :meth:`Learner.fit_critic`: the value head's regression (critic-based algorithms);
3. :meth:`Learner.update_policy`: each trainable agent's clipped update on its own adapter (or,
   with ``lora.shared``, one update of the shared adapter on all agents' actions); with
   ``algorithm.policy_step: mixed``, all adapters in one forward and backward per step.

The algorithm is an :class:`~marft.learner.spec.AlgorithmSpec` (estimator + the loss's default
aggregation); the pure math lives in :mod:`marft.algorithms`. Each step reports typed stats
(:mod:`marft.learner.stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from marft.algorithms import (
    AdvantageInputs,
    EstimatorParams,
    kl_estimate,
    masked_mean,
    masked_normalize,
    masked_normalize_per_agent,
    truncated_importance_weights,
)
from marft.config import AlgorithmConfig
from marft.learner.batching import AgentTargets, PolicyBatch, stack_agents
from marft.learner.critic import CriticBatch, CriticFitter
from marft.learner.parallel import SINGLE, DataParallel
from marft.learner.policy import PolicyUpdater
from marft.learner.scoring import Scores
from marft.learner.spec import ResolvedAlgorithm
from marft.learner.stats import (
    AdapterStats,
    AdvantageStats,
    AgentAdvantages,
    AgentStats,
    CriticStats,
    PolicyStats,
    TisStats,
    cut_share,
)
from marft.models.logprobs import SamplingParams
from marft.models.team_model import TeamModel
from marft.rollout.trajectory import AgentActions, Trajectory
from marft.team.graph import Agent, TeamGraph


@dataclass
class Targets:
    """The advantage step's output.

    Attributes:
        agents: per agent (acting order), its advantages and sample mask.
        critic: what the critic regresses on, or None without a critic.
        stats: this step's stats (KL to the reference, TIS weights, the estimator's scalars, and
            each agent's advantages as the policy trains on them).
    """

    agents: list[AgentTargets]
    critic: CriticBatch | None
    stats: AdvantageStats


@dataclass
class UpdateResult:
    """The stats of all three steps (:meth:`Learner.update`).

    Attributes:
        advantages: the advantage step's.
        critic: the critic's fit (:meth:`CriticStats.absent` without a critic).
        policy: the policy step's.
    """

    advantages: AdvantageStats
    critic: CriticStats
    policy: PolicyStats

    @property
    def trained(self) -> list[str]:
        """The adapters that were updated (the agents' roles, or ``shared``)."""
        return self.policy.trained

    @property
    def metrics(self) -> dict[str, float]:
        """Every step's columns of the metrics row."""
        out = self.advantages.metrics()
        out.update(self.policy.metrics())
        out.update(self.critic.metrics())
        return out


class Learner:
    """Updates a team model from scored trajectories.

    Args:
        cfg: the algorithm's hyper-parameters.
        sampling: the sampling distribution (the policy's log-probs are taken under it).
        algorithm: the resolved algorithm (spec, estimator and the loss's aggregation).
        model: the team model (a value head when the estimator needs a critic).
        graph: the team.
        dp: this process's place among data-parallel learners (:mod:`marft.learner.parallel`).
    """

    def __init__(
        self,
        cfg: AlgorithmConfig,
        sampling: SamplingParams,
        algorithm: ResolvedAlgorithm,
        model: TeamModel,
        graph: TeamGraph,
        dp: DataParallel = SINGLE,
    ) -> None:
        self.cfg = cfg
        self.algorithm = algorithm
        self.model = model
        self.graph = graph
        self.trainable = [a.role for a in graph.agents if a.trainable]
        lrs = {a.role: a.lr for a in graph.agents if a.lr is not None}
        self.policy = PolicyUpdater(cfg, sampling, model, self.trainable, algorithm.agg_mode, dp, lrs)
        # [N] each agent's KL coefficient (its own, else algorithm.kl_coef)
        self.kl_coefs = [cfg.kl_coef if a.kl_coef is None else a.kl_coef for a in graph.agents]
        self.critic: CriticFitter | None = None
        if algorithm.critic:
            if model.value_head is None:
                raise ValueError(f"algorithm {algorithm.name} needs the model's value head")
            self.critic = CriticFitter(model.value_head, cfg, dp)
        self.params = EstimatorParams(
            cfg.gamma,
            cfg.lam,
            cfg.token_gamma,
            cfg.token_lam,
            cfg.group_size,
            cfg.group_baseline,
            branching=tuple(cfg.branching),
            depths=tuple(a.depth for a in graph.agents),
        )

    def roles_to_train(self, iteration: int) -> list[str]:
        """Which agents update at ``iteration`` (none during critic warm-up)."""
        warmup = self.cfg.critic_warmup_iters if self.critic is not None else 0
        if iteration < warmup:
            return []
        if self.cfg.agent_by_agent > 0:
            k = (iteration - warmup) // self.cfg.agent_by_agent
            return [self.trainable[k % len(self.trainable)]]
        return list(self.trainable)

    def update(self, traj: Trajectory, scores: Scores, iteration: int) -> UpdateResult:
        """All three steps (the trainer times them one by one)."""
        targets = self.targets(traj, scores)
        critic = self.fit_critic(targets)
        policy = self.update_policy(traj, scores, targets, iteration)
        return UpdateResult(targets.stats, critic, policy)

    # ------------------------------------------------------------------------------ advantages

    def targets(self, traj: Trajectory, scores: Scores) -> Targets:
        """Advantages of every agent's actions (and the critic's regression targets); changes nothing."""
        B, T, N = traj.shape
        stats = AdvantageStats()
        inputs = AdvantageInputs(
            rewards=traj.rewards,
            team_rewards=traj.team_rewards,
            dones=traj.dones,
            action_mask=traj.action_mask,
            penalty=self._kl_penalty(traj, scores, stats),
            per_agent_rewards=traj.per_agent_rewards,
            turns=traj.turns,
            answers=traj.answers,
        )
        valued = self._values(traj, scores, inputs)
        out = self.algorithm.estimator(inputs, self.params)
        stats.estimator = dict(out.metrics)
        advantages, critic = out.advantages, None
        if valued is not None:
            feats, mask = valued
            critic = CriticBatch(feats, inputs.values, out.returns, mask)
            if self.algorithm.spec.normalize_advantages and self.cfg.normalize_advantages:
                if self.cfg.normalize_scope == "agent":
                    advantages = masked_normalize_per_agent(advantages, mask)
                else:
                    advantages = masked_normalize(advantages, mask)
        per_agent = []
        for a in self.graph.agents:
            adv = advantages[:, :, a.index]
            adv = adv.reshape(B * T, -1) if adv.dim() == 3 else adv.reshape(-1)
            if self.cfg.rollout_correction == "tis":
                adv = self._tis(a.role, traj.agents[a.index], scores.old_logprobs[a.index], adv, stats)
            sample_mask = traj.action_mask[:, :, a.index].reshape(-1)
            trained_on = AgentAdvantages.of(adv, sample_mask, traj.agents[a.index].response_mask)
            if trained_on is not None:  # an agent without a real sample has no column
                stats.agents[a.role] = trained_on
            per_agent.append(AgentTargets(adv, sample_mask))
        return Targets(per_agent, critic, stats)

    def _tis(
        self, role: str, actions: AgentActions, learner_logprobs: Tensor, adv: Tensor, stats: AdvantageStats
    ) -> Tensor:
        """Advantages weighted by the truncated importance ratio learner / sampler (per token, or
        per action for an ``action-mean`` loss)."""
        per_token = self.algorithm.agg_mode != "action-mean"
        mask = actions.response_mask.to(learner_logprobs.dtype)
        w = truncated_importance_weights(
            learner_logprobs, actions.logprobs, mask, self.cfg.tis_cap, per_token
        )
        real = mask.bool() if per_token else mask.sum(-1) > 0
        stats.tis[role] = TisStats(
            weight_mean=float(w[real].mean()) if real.any() else 1.0,
            capped=float((w[real] >= self.cfg.tis_cap).float().mean()) if real.any() else 0.0,
        )
        if not per_token:
            return adv * w
        return (adv[:, None] if adv.dim() == 1 else adv[:, : w.shape[1]]) * w

    def _kl_penalty(self, traj: Trajectory, scores: Scores, stats: AdvantageStats) -> Tensor | None:
        """Log each agent's KL to the reference; the ``[B, T, N]`` penalty in ``penalty`` mode."""
        if max(self.kl_coefs) <= 0:
            return None
        B, T, N = traj.shape
        per_agent = []
        for actions, ref in zip(traj.agents, scores.ref_logprobs, strict=True):
            kl = kl_estimate(actions.logprobs, ref, self.cfg.kl_estimator)
            per_agent.append((kl * actions.response_mask).sum(-1).reshape(B, T))
        kl_action = torch.stack(per_agent, dim=2)  # [B, T, N] summed per-token KL of each action
        for a in self.graph.agents:
            n_tok = traj.agents[a.index].response_mask.sum().clamp(min=1)
            stats.kl_ref[a.role] = float(kl_action[:, :, a.index].sum() / n_tok)
        if self.cfg.kl_mode != "penalty":
            return None
        coefs = torch.tensor(self.kl_coefs, dtype=kl_action.dtype, device=kl_action.device)
        return coefs * kl_action * traj.action_mask

    @torch.no_grad()
    def _values(
        self, traj: Trajectory, scores: Scores, inputs: AdvantageInputs
    ) -> tuple[Tensor, Tensor] | None:
        """Fill the critic's values into ``inputs``; ``(features, mask)`` the critic regresses on."""
        kind = self.algorithm.estimator.values
        if kind == "none":
            return None
        B, T, N = traj.shape
        head = self.model.value_head
        if kind == "action":
            feats = torch.stack(scores.features, dim=1).reshape(B, T, N, -1)
            mask = traj.action_mask
            inputs.values = head(feats)  # [B, T, N]
            inputs.last_values = head(scores.next_features)  # [B]
        else:
            feats = stack_agents(scores.features, B, T)  # [B, T, N, L, H]
            mask = stack_agents([a.response_mask for a in traj.agents], B, T)  # [B, T, N, L]
            mask = mask * traj.action_mask[..., None].to(mask.dtype)
            inputs.token_mask = mask
            inputs.values = head(feats) * mask
            inputs.last_values = head(scores.next_features[:, None])[:, 0]  # [B]
        if scores.cut_features is not None:
            inputs.truncated, inputs.cut_values = traj.truncated, head(scores.cut_features)  # [B, T]
        return feats, mask

    # ------------------------------------------------------------------------------ critic and policy

    def fit_critic(self, targets: Targets) -> CriticStats:
        """The critic's regression on this iteration's returns (:meth:`CriticStats.absent` without
        a critic)."""
        if self.critic is None or targets.critic is None:
            return CriticStats.absent()
        return self.critic.fit(targets.critic)

    def update_policy(
        self, traj: Trajectory, scores: Scores, targets: Targets, iteration: int
    ) -> PolicyStats:
        """Each agent's stats, and the clipped update of the adapters of those that train at
        ``iteration`` (a shared adapter on all its training agents' actions at once)."""
        stats = PolicyStats()
        self.policy.fwd_bwd_s = 0.0
        train = set(self.roles_to_train(iteration))
        by_adapter: dict[str, list[Agent]] = {}
        for a in self.graph.agents:
            stats.agents[a.role] = self._agent_stats(traj.agents[a.index], scores, targets, a.index)
            by_adapter.setdefault(self.model.adapter_name(a.role), []).append(a)
        batches: dict[str, PolicyBatch] = {}
        for name, agents in by_adapter.items():
            members = [a.index for a in agents if a.role in train]
            if members:
                own = [self._policy_batch(traj, scores, targets, n) for n in members]
                batches[name] = PolicyBatch.merge(own)
        updated = self.policy.update(batches)
        for name in by_adapter:
            stats.adapters[name] = updated.get(name, AdapterStats(trained=False))
        for model in self.model.members:
            model.policy.eval()
        stats.fwd_bwd_s = self.policy.fwd_bwd_s
        return stats

    def _policy_batch(self, traj: Trajectory, scores: Scores, targets: Targets, n: int) -> PolicyBatch:
        """Agent ``n``'s actions, log-probs and targets; for a group-relative algorithm with
        ``algorithm.minibatch_groups``, each row's group (env copy ``b``'s rows ``b*T .. b*T+T-1``
        belong to group ``b // group_size``)."""
        ref = scores.ref_logprobs[n] if scores.ref_logprobs is not None else None
        own = targets.agents[n]
        groups = None
        if self.algorithm.episodic and self.cfg.minibatch_groups:
            B, T, _ = traj.shape
            env_copy = torch.arange(B, device=own.sample_mask.device).repeat_interleave(T)
            groups = env_copy // self.params.group_size
        old = scores.old_logprobs[n]
        kl_coef = self.kl_coefs[n]
        return PolicyBatch(traj.agents[n], old, ref, own.advantages, own.sample_mask, groups, kl_coef)

    def _agent_stats(self, actions: AgentActions, scores: Scores, targets: Targets, n: int) -> AgentStats:
        """Agent ``n``'s token entropy, mean action length and share of actions cut at the length
        limit."""
        entropy = actions.entropy
        if scores.entropy is not None and scores.entropy[n] is not None:
            entropy = scores.entropy[n]  # the sampler may not report it (vLLM)
        sample_mask = targets.agents[n].sample_mask
        eos_ids = self.model.of(self.graph.roles[n]).eos_ids  # the agent's own base's
        return AgentStats(
            entropy=float(masked_mean(entropy, actions.response_mask)),
            response_tokens=float(masked_mean(actions.response_mask.sum(-1).float(), sample_mask)),
            cut_share=cut_share(actions.response_ids, actions.response_mask, sample_mask, eos_ids),
        )

    # ------------------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Every optimizer's state (the learner keeps no other state between updates)."""
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.optimizer.state_dict() if self.critic is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.critic is not None and state.get("critic") is not None:
            self.critic.optimizer.load_state_dict(state["critic"])
