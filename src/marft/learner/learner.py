"""The learner: one iteration's update as three steps on a scored trajectory.

1. :meth:`Learner.targets` (no side effects): the critic's values, the KL penalty as one explicit
   term, the registered advantage estimator, and per agent its advantages;
2. :meth:`Learner.fit_critic`: the value head's regression (critic-based algorithms);
3. :meth:`Learner.update_policy`: each trainable agent's clipped update on its own adapter (or,
   with ``lora.shared``, one update of the shared adapter on all agents' actions).

The algorithm is an :class:`~marft.learner.spec.AlgorithmSpec` (estimator + loss level); the
pure math lives in :mod:`marft.algorithms`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from marft.algorithms import (
    AdvantageInputs,
    EstimatorParams,
    kl_estimate,
    masked_mean,
    masked_normalize,
    truncated_importance_weights,
)
from marft.config import AlgorithmConfig, SamplingConfig
from marft.learner.batching import stack_agents
from marft.learner.critic import CriticBatch, CriticFitter
from marft.learner.parallel import SINGLE, DataParallel
from marft.learner.policy import AgentBatch, AgentTargets, PolicyUpdater, merge_agents
from marft.learner.scoring import Scores
from marft.learner.spec import ResolvedAlgorithm
from marft.models.team_model import TeamModel
from marft.rollout.trajectory import Trajectory
from marft.team.graph import TeamGraph


@dataclass
class UpdateResult:
    """What one update reports: scalar metrics by name and which adapters were trained (the
    agents' roles, or ``shared``)."""

    metrics: dict[str, float] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)


@dataclass
class Targets:
    """The advantage step's output.

    Attributes:
        agents: per agent (acting order), its advantages and sample mask.
        critic: what the critic regresses on, or None without a critic.
        metrics: scalars of this step (KL to the reference, group statistics).
    """

    agents: list[AgentTargets]
    critic: CriticBatch | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Learner:
    """Updates a team model from scored trajectories.

    Args:
        cfg: the algorithm's hyper-parameters.
        sampling: the sampling distribution.
        algorithm: the resolved algorithm (spec and estimator).
        model: the team model (a value head when the estimator needs a critic).
        graph: the team.
        dp: this process's place among data-parallel learners (:mod:`marft.learner.parallel`).
    """

    def __init__(
        self,
        cfg: AlgorithmConfig,
        sampling: SamplingConfig,
        algorithm: ResolvedAlgorithm,
        model: TeamModel,
        graph: TeamGraph,
        dp: DataParallel = SINGLE,
    ) -> None:
        self.cfg, self.algorithm, self.model, self.graph = cfg, algorithm, model, graph
        self.trainable = [a.role for a in graph.agents if a.trainable]
        token_level = algorithm.spec.loss_level == "token"
        self.policy = PolicyUpdater(cfg, sampling, model, self.trainable, token_level, dp)
        self.critic: CriticFitter | None = None
        if algorithm.critic:
            if model.value_head is None:
                raise ValueError(f"algorithm {algorithm.name} needs the model's value head")
            self.critic = CriticFitter(model.value_head, cfg, dp)
        self.params = EstimatorParams(cfg.gamma, cfg.lam, cfg.token_gamma, cfg.token_lam, cfg.group_size)

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
        critic_metrics = self.fit_critic(targets)
        result = self.update_policy(traj, scores, targets, iteration)
        result.metrics.update(critic_metrics)
        return result

    # ------------------------------------------------------------------------------ advantages

    def targets(self, traj: Trajectory, scores: Scores) -> Targets:
        """Advantages of every agent's actions (and the critic's regression targets); changes nothing."""
        B, T, N = traj.shape
        metrics: dict[str, float] = {}
        inputs = AdvantageInputs(
            rewards=traj.rewards,
            team_rewards=traj.team_rewards,
            dones=traj.dones,
            action_mask=traj.action_mask,
            penalty=self._kl_penalty(traj, scores, metrics),
            per_agent_rewards=traj.per_agent_rewards,
            turns=traj.turns,
        )
        valued = self._values(traj, scores, inputs)
        out = self.algorithm.estimator(inputs, self.params)
        metrics.update(out.metrics)
        advantages, critic = out.advantages, None
        if valued is not None:
            feats, mask = valued
            critic = CriticBatch(feats, inputs.values, out.returns, mask)
            if self.algorithm.spec.normalize_advantages and self.cfg.normalize_advantages:
                advantages = masked_normalize(advantages, mask)
        per_agent = []
        for a in self.graph.agents:
            adv = advantages[:, :, a.index]
            adv = adv.reshape(B * T, -1) if adv.dim() == 3 else adv.reshape(-1)
            if self.cfg.rollout_correction == "tis":
                adv = self._tis(a.role, traj.agents[a.index], scores.old_logprobs[a.index], adv, metrics)
            per_agent.append(AgentTargets(adv, traj.action_mask[:, :, a.index].reshape(-1)))
        return Targets(per_agent, critic, metrics)

    def _tis(self, role: str, actions, learner_logprobs: Tensor, adv: Tensor, metrics: dict) -> Tensor:
        """Advantages weighted by the truncated importance ratio learner / sampler (per token, or
        per action for action-level losses)."""
        per_token = self.algorithm.spec.loss_level == "token"
        mask = actions.response_mask.to(learner_logprobs.dtype)
        w = truncated_importance_weights(
            learner_logprobs, actions.logprobs, mask, self.cfg.tis_cap, per_token
        )
        real = mask.bool() if per_token else mask.sum(-1) > 0
        metrics[f"tis_weight_mean/{role}"] = float(w[real].mean()) if real.any() else 1.0
        metrics[f"tis_capped/{role}"] = (
            float((w[real] >= self.cfg.tis_cap).float().mean()) if real.any() else 0.0
        )
        if not per_token:
            return adv * w
        return (adv[:, None] if adv.dim() == 1 else adv[:, : w.shape[1]]) * w

    def _kl_penalty(self, traj: Trajectory, scores: Scores, metrics: dict[str, float]) -> Tensor | None:
        """Log each agent's KL to the reference; the ``[B, T, N]`` penalty in ``penalty`` mode."""
        if self.cfg.kl_coef <= 0:
            return None
        B, T, N = traj.shape
        per_agent = []
        for actions, ref in zip(traj.agents, scores.ref_logprobs, strict=True):
            kl = kl_estimate(actions.logprobs, ref, self.cfg.kl_estimator)
            per_agent.append((kl * actions.response_mask).sum(-1).reshape(B, T))
        kl_action = torch.stack(per_agent, dim=2)  # [B, T, N] summed per-token KL of each action
        for a in self.graph.agents:
            n_tok = traj.agents[a.index].response_mask.sum().clamp(min=1)
            metrics[f"kl_ref/{a.role}"] = float(kl_action[:, :, a.index].sum() / n_tok)
        if self.cfg.kl_mode != "penalty":
            return None
        return self.cfg.kl_coef * kl_action * traj.action_mask

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

    def fit_critic(self, targets: Targets) -> dict[str, float]:
        """The critic's regression on this iteration's returns (nothing without a critic)."""
        if self.critic is None or targets.critic is None:
            return {}
        return self.critic.fit(targets.critic)

    def update_policy(
        self, traj: Trajectory, scores: Scores, targets: Targets, iteration: int
    ) -> UpdateResult:
        """Each agent's metrics, and the clipped update of the adapters of those that train at
        ``iteration`` (a shared adapter on all its training agents' actions at once)."""
        result = UpdateResult(metrics=dict(targets.metrics))
        self.policy.fwd_bwd_s = 0.0
        train = set(self.roles_to_train(iteration))
        by_adapter: dict[str, list] = {}
        for a in self.graph.agents:
            result.metrics.update(self._action_stats(a.role, traj.agents[a.index], scores, targets, a.index))
            by_adapter.setdefault(self.model.adapter_name(a.role), []).append(a)
        for name, agents in by_adapter.items():
            members = [a for a in agents if a.role in train]
            if not members:
                result.metrics[f"policy_loss/{name}"] = 0.0
                result.metrics[f"approx_kl/{name}"] = 0.0
                continue
            batch, agent_targets = merge_agents(
                [self._agent_batch(traj, scores, a.index) for a in members],
                [targets.agents[a.index] for a in members],
            )
            result.metrics.update(self.policy.update_adapter(name, batch, agent_targets))
            result.trained.append(name)
        self.model.policy.eval()
        result.metrics["time_fwd_bwd_s"] = self.policy.fwd_bwd_s
        return result

    @staticmethod
    def _agent_batch(traj: Trajectory, scores: Scores, n: int) -> AgentBatch:
        ref = scores.ref_logprobs[n] if scores.ref_logprobs is not None else None
        return AgentBatch(traj.agents[n], scores.old_logprobs[n], ref)

    @staticmethod
    def _action_stats(role: str, actions, scores: Scores, targets: Targets, n: int) -> dict[str, float]:
        """Agent ``role``'s token entropy and mean action length."""
        entropy = actions.entropy
        if scores.entropy is not None and scores.entropy[n] is not None:
            entropy = scores.entropy[n]  # the sampler may not report it (vLLM)
        return {
            f"entropy/{role}": float(masked_mean(entropy, actions.response_mask)),
            f"response_tokens/{role}": float(
                masked_mean(actions.response_mask.sum(-1).float(), targets.agents[n].sample_mask)
            ),
        }

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
