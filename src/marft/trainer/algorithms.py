"""Algorithms: how a rollout becomes parameter updates. Chosen by ``algorithm.name``.

Each algorithm composes the pure math of :mod:`marft.algorithms` with the team model; adding one
is a new class and a registration here, not an edit of the trainer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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


def micro_batches(idx: Tensor, seq: SequenceBatch, max_rows: int, max_tokens: int = 0) -> list[Tensor]:
    """Split minibatch indices into micro-batches that bound memory.

    Each micro-batch holds at most ``max_rows`` rows and, if ``max_tokens > 0``, at most
    ``max_tokens`` padded tokens (rows x (longest prompt + longest response) after trimming), so
    that agents late in a chain, whose prompts hold every earlier output, do not need more memory.

    Args:
        idx: ``[M]`` row indices, in the order to keep.
        seq: the agent's sequences (for lengths).
        max_rows: row cap.
        max_tokens: padded-token cap (0: off).
    """
    if max_tokens <= 0:
        return list(idx.split(max_rows))
    p_len = seq.prompt_mask[idx].sum(-1).tolist()
    r_len = seq.response_mask[idx].sum(-1).tolist()
    groups: list[list[int]] = []
    rows: list[int] = []
    p_max = r_max = 0
    for k, (p, r) in enumerate(zip(p_len, r_len, strict=True)):
        p_new, r_new = max(p_max, p), max(r_max, r)
        if rows and (len(rows) >= max_rows or (len(rows) + 1) * (p_new + r_new) > max_tokens):
            groups.append(rows)
            rows, p_new, r_new = [], p, r
        rows.append(k)
        p_max, r_max = p_new, r_new
    groups.append(rows)
    return [idx[torch.tensor(g, device=idx.device)] for g in groups]


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
        self._fwd_bwd_s = 0.0  # seconds in policy forwards and backwards, this update
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
        seq = steps.sequences
        old = action_logprob(steps.old_logprobs, seq.response_mask, steps.word_counts, cfg.logprob_norm)
        params = model.adapter_parameters(role)
        opt = self.optimizers[role]
        losses, kls, clipfracs = [], [], []
        stopped = False
        with model.adapter(role):
            model.policy.train()
            for _ in range(cfg.ppo_epochs):
                perm = torch.randperm(old.shape[0], device=old.device)
                epoch_kl = torch.zeros((), device=old.device)
                for mb in perm.chunk(cfg.num_minibatches):
                    opt.zero_grad(set_to_none=True)
                    loss, kl, clipfrac = self.minibatch_backward(steps, old, advantages, mask, mb)
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                    losses.append(loss)
                    clipfracs.append(clipfrac)
                    epoch_kl = epoch_kl + kl / cfg.num_minibatches
                kls.append(float(epoch_kl))
                if cfg.target_kl is not None and kls[-1] > cfg.target_kl:
                    stopped = True
                    break
        return {
            f"policy_loss/{role}": float(torch.stack(losses).mean()),
            f"approx_kl/{role}": kls[-1],
            f"clipfrac/{role}": float(torch.stack(clipfracs).mean()),
            f"epochs/{role}": float(len(kls)),
            f"kl_early_stop/{role}": float(stopped),
        }

    def minibatch_backward(
        self, steps: AgentSteps, old: Tensor, advantages: Tensor, mask: Tensor, mb: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Accumulate the gradient of one minibatch, micro-batch by micro-batch (active adapter).

        Each micro-batch's loss is weighted by its share of the minibatch's real samples, so the
        accumulated gradient equals that of a single pass over the whole minibatch whatever the
        micro-batching.

        Args:
            steps: the agent's actions.
            old: ``[S]`` action log-probs at sampling time.
            advantages: ``[S]``.
            mask: ``[S]`` real entries.
            mb: indices of the minibatch.

        Returns:
            ``(policy_loss, approx_kl, clipfrac)`` of the minibatch, as detached scalars.
        """
        cfg, seq = self.cfg, steps.sequences
        mb_real = mask[mb].sum().clamp(min=1.0)
        loss_sum = kl_sum = clip_sum = torch.zeros((), device=old.device)
        for idx in micro_batches(mb, seq, cfg.micro_batch_size, cfg.micro_batch_tokens):
            t0 = time.perf_counter()
            batch = SequenceBatch(
                seq.prompt_ids[idx], seq.prompt_mask[idx], seq.response_ids[idx], seq.response_mask[idx]
            ).trimmed()
            tok_lp, tok_ent = self.model.action_logprobs(
                batch, self.sampling.temperature, self.sampling.top_k, self.sampling.top_p
            )
            lp = action_logprob(tok_lp, batch.response_mask, steps.word_counts[idx], cfg.logprob_norm)
            out = ppo_policy_loss(lp, old[idx], advantages[idx], mask[idx], cfg.clip_eps)
            loss = out.loss
            if cfg.entropy_coef:
                per_action = tok_ent.sum(-1) / batch.response_mask.sum(-1).clamp(min=1)
                loss = loss - cfg.entropy_coef * masked_mean(per_action, mask[idx])
            share = mask[idx].sum() / mb_real
            (loss * share).backward()
            self._fwd_bwd_s += time.perf_counter() - t0
            loss_sum = loss_sum + out.loss.detach() * share
            kl_sum = kl_sum + out.approx_kl * share
            clip_sum = clip_sum + out.clipfrac * share
        return loss_sum, kl_sum, clip_sum
