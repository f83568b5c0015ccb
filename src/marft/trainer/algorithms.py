"""Algorithms: how a rollout becomes parameter updates. Chosen by ``algorithm.name``.

Each algorithm composes the pure math of :mod:`marft.algorithms` with the team model; adding one
is a new class and a registration here, not an edit of the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import time

import torch
from torch import Tensor

from marft.algorithms import compute_agentwise_gae, masked_mean, masked_normalize, ppo_policy_loss, value_loss
from marft.config import AlgorithmConfig, SamplingConfig
from marft.models.team_model import SequenceBatch, TeamModel
from marft.registry import Registry
from marft.rollout.collector import AgentSteps, Rollout
from marft.team.graph import TeamGraph

ALGORITHMS: Registry = Registry("algorithm")


@dataclass
class UpdateResult:
    """What one update reports: scalar metrics by name and which agents were trained."""

    metrics: dict[str, float] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)


def action_logprob(token_logprobs: Tensor, response_mask: Tensor, word_counts: Tensor, norm: str) -> Tensor:
    """Per-action log-prob from token log-probs.

    Args:
        token_logprobs: ``[S, L]`` (0 on padding).
        response_mask: ``[S, L]``.
        word_counts: ``[S]`` words in each decoded action.
        norm: ``sum``, ``token_mean`` (divide by token count) or ``word_mean`` (by word count).

    Returns:
        ``[S]``.
    """
    total = token_logprobs.sum(-1)
    if norm == "token_mean":
        return total / response_mask.sum(-1).clamp(min=1).to(total.dtype)
    if norm == "word_mean":
        return total / word_counts.clamp(min=1).to(total.dtype)
    return total


def _micro_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@ALGORITHMS.register("appo")
class APPO:
    """Action-level PPO with one critic and agent-wise GAE (MARFT's APPO, Liao et al. 2025, Alg. 1).

    One optimizer per agent; the critic is a value head on frozen base features. With
    ``agent_by_agent: K`` only one trainable agent updates at a time, switching every K iterations,
    and no other adapter (nor the base) is touched.
    """

    uses_critic = True

    def __init__(
        self, cfg: AlgorithmConfig, sampling: SamplingConfig, model: TeamModel, graph: TeamGraph
    ) -> None:
        self.cfg, self.sampling, self.model, self.graph = cfg, sampling, model, graph
        self.trainable = [a.role for a in graph.agents if a.trainable]
        self.optimizers = {
            role: torch.optim.AdamW(
                model.adapter_parameters(role), lr=cfg.policy_lr, weight_decay=cfg.weight_decay
            )
            for role in self.trainable
        }
        assert model.value_head is not None, "APPO needs the value head"
        self.critic_optimizer = torch.optim.AdamW(
            model.value_head.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay
        )

    def roles_to_train(self, iteration: int) -> list[str]:
        """Which agents update at ``iteration`` (none during critic warm-up)."""
        if iteration < self.cfg.critic_warmup_iters:
            return []
        if self.cfg.agent_by_agent > 0:
            k = (iteration - self.cfg.critic_warmup_iters) // self.cfg.agent_by_agent
            return [self.trainable[k % len(self.trainable)]]
        return list(self.trainable)

    def state_dict(self) -> dict:
        return {
            "policy": {r: o.state_dict() for r, o in self.optimizers.items()},
            "critic": self.critic_optimizer.state_dict(),
        }

    def update(self, rollout: Rollout, iteration: int) -> UpdateResult:
        cfg, model = self.cfg, self.model
        B, T, N = rollout.rewards.shape
        feats = torch.stack([a.features for a in rollout.agents], dim=1)  # [B*T, N, H]
        feats = feats.reshape(B, T, N, -1)
        with torch.no_grad():
            old_values = model.value_head(feats)  # [B, T, N]
            last_values = model.value_head(rollout.last_features)  # [B]
        advantages, returns = compute_agentwise_gae(
            rollout.rewards, old_values, rollout.dones, last_values, cfg.gamma, cfg.lam
        )
        mask = rollout.action_mask
        if cfg.normalize_advantages:
            advantages = masked_normalize(advantages, mask)
        result = UpdateResult()
        result.metrics["value_loss"] = self._update_critic(feats, old_values, returns, mask)
        result.metrics["value_mean"] = float(masked_mean(old_values, mask))
        result.metrics["return_target_mean"] = float(masked_mean(returns, mask))

        self._fwd_bwd_s = 0.0
        train = set(self.roles_to_train(iteration))
        for agent in self.graph.agents:
            role = agent.role
            steps = rollout.agents[agent.index]
            ent = float(masked_mean(steps.entropy, steps.sequences.response_mask))
            result.metrics[f"entropy/{role}"] = ent
            result.metrics[f"response_tokens/{role}"] = float(
                steps.sequences.response_mask.sum(-1).float().mean()
            )
            if role in train:
                adv = advantages[:, :, agent.index].reshape(-1)
                m = mask[:, :, agent.index].reshape(-1)
                result.metrics.update(self._update_agent(role, steps, adv, m))
                result.trained.append(role)
            else:
                result.metrics[f"policy_loss/{role}"] = 0.0
                result.metrics[f"approx_kl/{role}"] = 0.0
        model.policy.eval()
        result.metrics["time_fwd_bwd_s"] = self._fwd_bwd_s
        return result

    def _update_critic(self, feats: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor) -> float:
        cfg = self.cfg
        f, ov, ret, m = feats.flatten(0, 2), old_values.flatten(), returns.flatten(), mask.flatten()
        n = f.shape[0]
        losses = []
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(n, device=f.device)
            for idx in perm.chunk(cfg.num_minibatches):
                v = self.model.value_head(f[idx])
                loss = value_loss(
                    v, ov[idx], ret[idx], m[idx], cfg.value_clip_eps, cfg.value_loss, cfg.huber_delta
                )
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.value_head.parameters(), cfg.max_grad_norm)
                self.critic_optimizer.step()
                losses.append(loss.detach())
        return float(torch.stack(losses).mean())

    def _update_agent(
        self, role: str, steps: AgentSteps, advantages: Tensor, mask: Tensor
    ) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        seq, norm = steps.sequences, cfg.logprob_norm
        old = action_logprob(steps.old_logprobs, seq.response_mask, steps.word_counts, norm)
        params = model.adapter_parameters(role)
        opt = self.optimizers[role]
        n = old.shape[0]
        losses, kls, clipfracs = [], [], []
        stopped = False
        with model.adapter(role):
            model.policy.train()
            for _ in range(cfg.ppo_epochs):
                perm = torch.randperm(n, device=old.device)
                epoch_kls = []
                for mb in perm.chunk(cfg.num_minibatches):
                    opt.zero_grad(set_to_none=True)
                    mb_real = mask[mb].sum().clamp(min=1.0)
                    for sl in _micro_slices(len(mb), cfg.micro_batch_size):
                        idx = mb[sl]
                        t0 = time.perf_counter()
                        batch = SequenceBatch(
                            seq.prompt_ids[idx],
                            seq.prompt_mask[idx],
                            seq.response_ids[idx],
                            seq.response_mask[idx],
                        ).trimmed()
                        tok_lp, tok_ent = model.action_logprobs(
                            batch, self.sampling.temperature, self.sampling.top_k, self.sampling.top_p
                        )
                        lp = action_logprob(tok_lp, batch.response_mask, steps.word_counts[idx], norm)
                        out = ppo_policy_loss(lp, old[idx], advantages[idx], mask[idx], cfg.clip_eps)
                        loss = out.loss
                        if cfg.entropy_coef:
                            per_action = tok_ent.sum(-1) / batch.response_mask.sum(-1).clamp(min=1)
                            loss = loss - cfg.entropy_coef * masked_mean(per_action, mask[idx])
                        # Weight each micro-batch by its share of real samples: the accumulated
                        # gradient equals that of one pass over the whole minibatch.
                        share = mask[idx].sum() / mb_real
                        (loss * share).backward()
                        self._fwd_bwd_s += time.perf_counter() - t0
                        losses.append(out.loss.detach() * share)
                        epoch_kls.append(out.approx_kl * share)
                        clipfracs.append(out.clipfrac)
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                kl = float(torch.stack(epoch_kls).sum()) / max(1, cfg.num_minibatches)
                kls.append(kl)
                if cfg.target_kl is not None and kl > cfg.target_kl:
                    stopped = True
                    break
        n_mb = max(1, len(kls) * cfg.num_minibatches)
        return {
            f"policy_loss/{role}": float(torch.stack(losses).sum()) / n_mb,
            f"approx_kl/{role}": kls[-1],
            f"clipfrac/{role}": float(torch.stack(clipfracs).mean()),
            f"epochs/{role}": float(len(kls)),
            f"kl_early_stop/{role}": float(stopped),
        }
