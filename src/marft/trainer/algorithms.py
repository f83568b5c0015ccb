"""Algorithms: how a rollout becomes parameter updates. Chosen by ``algorithm.name``.

Each algorithm composes the pure math of :mod:`marft.algorithms` (advantage estimators, policy
losses, KL estimators, all chosen by name) with the team model. They share one policy-update
machinery (:class:`PolicyGradient`) and differ in how they turn a rollout into advantages:

* ``appo``: action-level PPO, one critic on the state before each action, agent-wise GAE;
* ``tppo``: token-level PPO, the critic valued before every token, token-wise GAE;
* ``grpo``, ``dr_grpo``, ``rloo``, ``reinforce_pp``: critic-free; each task instance is rolled
  out ``group_size`` times and the team's returns become advantages within the group.

Adding one is a new class (or estimator function) and a registration, not an edit of the trainer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from marft.algorithms import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    compute_agentwise_gae,
    compute_tokenwise_gae,
    kl_estimate,
    masked_mean,
    masked_normalize,
    value_loss,
)
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


def stack_agents(tensors: list[Tensor], B: int, T: int, fill: float = 0.0) -> Tensor:
    """Per-agent ``[B*T, L_i, ...]`` tensors -> ``[B, T, N, L, ...]`` padded to the longest ``L_i``."""
    L = max(x.shape[1] for x in tensors)
    padded = []
    for x in tensors:
        pad = torch.full((x.shape[0], L - x.shape[1], *x.shape[2:]), fill, dtype=x.dtype, device=x.device)
        padded.append(torch.cat([x, pad], dim=1).reshape(B, T, L, *x.shape[2:]))
    return torch.stack(padded, dim=2)


@dataclass
class AgentTargets:
    """What one agent's policy update needs.

    Attributes:
        advantages: ``[S]`` per action, or ``[S, L]`` per token.
        sample_mask: ``[S]`` 1 where the agent really acted.
    """

    advantages: Tensor
    sample_mask: Tensor


class PolicyGradient:
    """Shared machinery: per-agent optimizers, agent-by-agent scheduling, the KL anchor, micro-batched
    clipped policy updates. Subclasses implement :meth:`targets`.

    Class attributes:
        critic: critic features the collector must compute (``"last"``, ``"tokens"`` or None).
        token_level: the policy loss is a masked token-mean (else one ratio per action).
        episodic: collect whole episodes in groups of ``group_size`` (critic-free methods).
    """

    critic: str | None = None
    token_level: bool = False
    episodic: bool = False

    def __init__(
        self, cfg: AlgorithmConfig, sampling: SamplingConfig, model: TeamModel, graph: TeamGraph
    ) -> None:
        self.cfg, self.sampling, self.model, self.graph = cfg, sampling, model, graph
        self.policy_loss = POLICY_LOSSES.get(cfg.policy_loss)
        self.trainable = [a.role for a in graph.agents if a.trainable]
        self._fwd_bwd_s = 0.0  # seconds in policy forwards and backwards, this update
        self.optimizers = {
            role: torch.optim.AdamW(
                model.adapter_parameters(role), lr=cfg.policy_lr, weight_decay=cfg.weight_decay
            )
            for role in self.trainable
        }
        recompute = cfg.recompute_old_logprobs
        base_dtype = next(p.dtype for _, p in model.base_parameters())
        self.recompute_old_logprobs = base_dtype != torch.float32 if recompute is None else recompute
        self.critic_optimizer = None
        if self.critic is not None:
            if model.value_head is None:
                raise ValueError(f"{type(self).__name__} needs the model's value head")
            self.critic_optimizer = torch.optim.AdamW(
                model.value_head.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay
            )

    @property
    def needs_ref_logprobs(self) -> bool:
        return self.cfg.kl_coef > 0

    def roles_to_train(self, iteration: int) -> list[str]:
        """Which agents update at ``iteration`` (none during critic warm-up)."""
        warmup = self.cfg.critic_warmup_iters if self.critic is not None else 0
        if iteration < warmup:
            return []
        if self.cfg.agent_by_agent > 0:
            k = (iteration - warmup) // self.cfg.agent_by_agent
            return [self.trainable[k % len(self.trainable)]]
        return list(self.trainable)

    def state_dict(self) -> dict:
        """Every optimizer's state (the algorithm keeps no other state between updates)."""
        return {
            "policy": {r: o.state_dict() for r, o in self.optimizers.items()},
            "critic": self.critic_optimizer.state_dict() if self.critic_optimizer is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.optimizers) - set(state["policy"])
        if missing:
            raise ValueError(f"the checkpoint has no optimizer state for agents {sorted(missing)}")
        for role, opt in self.optimizers.items():
            opt.load_state_dict(state["policy"][role])
        if self.critic_optimizer is not None and state.get("critic") is not None:
            self.critic_optimizer.load_state_dict(state["critic"])

    # ------------------------------------------------------------------------------ targets

    def targets(self, rollout: Rollout, rewards: Tensor, result: UpdateResult) -> dict[str, AgentTargets]:
        """Advantages for every agent (and any critic update); ``rewards`` include a KL penalty."""
        raise NotImplementedError

    def _kl_per_action(self, rollout: Rollout) -> Tensor | None:
        """``[B, T, N]`` summed per-token KL estimate of each sampled action against the reference."""
        if not self.needs_ref_logprobs:
            return None
        B, T, N = rollout.rewards.shape
        per_agent = []
        for steps in rollout.agents:
            kl = kl_estimate(steps.old_logprobs, steps.ref_logprobs, self.cfg.kl_estimator)
            per_agent.append((kl * steps.sequences.response_mask).sum(-1).reshape(B, T))
        return torch.stack(per_agent, dim=2)

    # ------------------------------------------------------------------------------ update

    def update(self, rollout: Rollout, iteration: int) -> UpdateResult:
        cfg, model = self.cfg, self.model
        result = UpdateResult()
        self._fwd_bwd_s = 0.0
        rewards = rollout.rewards
        kl_action = self._kl_per_action(rollout)
        if kl_action is not None:
            for agent in self.graph.agents:
                steps = rollout.agents[agent.index]
                n_tok = steps.sequences.response_mask.sum().clamp(min=1)
                result.metrics[f"kl_ref/{agent.role}"] = float(kl_action[:, :, agent.index].sum() / n_tok)
            if cfg.kl_mode == "penalty":
                rewards = rewards - cfg.kl_coef * kl_action * rollout.action_mask
        targets = self.targets(rollout, rewards, result)
        train = set(self.roles_to_train(iteration))
        for agent in self.graph.agents:
            role = agent.role
            steps = rollout.agents[agent.index]
            result.metrics[f"entropy/{role}"] = float(
                masked_mean(steps.entropy, steps.sequences.response_mask)
            )
            result.metrics[f"response_tokens/{role}"] = float(
                masked_mean(steps.sequences.response_mask.sum(-1).float(), targets[role].sample_mask)
            )
            if role in train:
                result.metrics.update(self._update_agent(role, steps, targets[role]))
                result.trained.append(role)
            else:
                result.metrics[f"policy_loss/{role}"] = 0.0
                result.metrics[f"approx_kl/{role}"] = 0.0
        model.policy.eval()
        result.metrics["time_fwd_bwd_s"] = self._fwd_bwd_s
        return result

    def _bootstrap_truncation(self, rollout: Rollout, rewards: Tensor) -> Tensor:
        """Add ``gamma * V(next observation)`` to the last agent's reward where the horizon cut an
        episode: GAE then cuts there (``dones`` is 1) without treating a time limit as terminal."""
        if rollout.truncated_features is None:
            return rewards
        with torch.no_grad():
            v_next = self.model.value_head(rollout.truncated_features)  # [B, T]
        rewards = rewards.clone()
        rewards[:, :, -1] += self.cfg.gamma * rollout.truncated * v_next
        return rewards

    def _fit_critic(
        self,
        feats: Tensor,
        old_values: Tensor,
        advantages: Tensor,
        returns: Tensor,
        mask: Tensor,
        result: UpdateResult,
    ) -> Tensor:
        """Train the critic on the real entries (``mask``), log it, and return the advantages,
        standardised over the real entries if ``normalize_advantages``.

        Shapes: ``feats [..., H]``; the rest ``[...]`` (``[B, T, N]`` or ``[B, T, N, L]``).
        """
        real = mask.bool()
        value_loss_, skipped = self._update_critic(feats[real], old_values[real], returns[real])
        result.metrics["value_loss"] = value_loss_
        result.metrics["nonfinite_skip/critic"] = float(skipped)
        result.metrics["value_mean"] = float(masked_mean(old_values, mask))
        result.metrics["return_target_mean"] = float(masked_mean(returns, mask))
        return masked_normalize(advantages, mask) if self.cfg.normalize_advantages else advantages

    def _update_critic(self, feats: Tensor, old_values: Tensor, returns: Tensor) -> tuple[float, bool]:
        """Critic epochs on real entries only: ``feats [M, H]``, ``old_values``/``returns [M]``.

        Returns:
            ``(mean value loss, whether the update stopped at a non-finite loss or gradient)``.
        """
        cfg = self.cfg
        ones = torch.ones_like(old_values)
        losses = []
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(feats.shape[0], device=feats.device)
            for idx in perm.chunk(cfg.num_minibatches):
                v = self.model.value_head(feats[idx])
                loss = value_loss(
                    v,
                    old_values[idx],
                    returns[idx],
                    ones[idx],
                    cfg.value_clip_eps,
                    cfg.value_loss,
                    cfg.huber_delta,
                )
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(self.model.value_head.parameters(), cfg.max_grad_norm)
                if not (torch.isfinite(loss) and torch.isfinite(norm)):
                    self.critic_optimizer.zero_grad(set_to_none=True)
                    return (float(torch.stack(losses).mean()) if losses else float("nan")), True
                self.critic_optimizer.step()
                losses.append(loss.detach())
        return float(torch.stack(losses).mean()), False

    def _recompute_old_logprobs(self, steps: AgentSteps) -> AgentSteps:
        """Old log-probs from the learner's own forward (active adapter, no grad, eval mode).

        In half precision the sampler's KV-cached, mixed-adapter forward and the learner's full
        forward round differently, so the PPO ratio would not start at 1; this costs one forward.
        """
        seq, cfg, sp = steps.sequences, self.cfg, self.sampling
        out = torch.zeros_like(steps.old_logprobs)
        self.model.policy.eval()
        with torch.no_grad():
            idx_all = torch.nonzero(seq.response_mask.sum(-1) > 0).squeeze(-1)  # finished envs: no tokens
            for idx in micro_batches(idx_all, seq, cfg.micro_batch_size, cfg.micro_batch_tokens):
                batch = SequenceBatch(
                    seq.prompt_ids[idx], seq.prompt_mask[idx], seq.response_ids[idx], seq.response_mask[idx]
                ).trimmed()
                lp, _ = self.model.action_logprobs(batch, sp.temperature, sp.top_k, sp.top_p)
                out[idx, : lp.shape[1]] = lp
        return replace(steps, old_logprobs=out)

    def _update_agent(self, role: str, steps: AgentSteps, targets: AgentTargets) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        seq = steps.sequences
        params = model.adapter_parameters(role)
        opt = self.optimizers[role]
        losses, kls, clipfracs = [], [], []
        steps_taken, stopped, nonfinite = 0, False, False
        with model.adapter(role):
            if self.recompute_old_logprobs:
                steps = self._recompute_old_logprobs(steps)
            model.policy.train()
            for _ in range(cfg.ppo_epochs):
                perm = torch.randperm(seq.prompt_ids.shape[0], device=seq.prompt_ids.device)
                for mb in perm.chunk(cfg.num_minibatches):
                    opt.zero_grad(set_to_none=True)
                    loss, kl, clipfrac = self.minibatch_backward(steps, targets, mb)
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                        # One bad step would poison the adapter and Adam's moments for good: skip
                        # this agent's whole update this iteration; the trainer counts these.
                        opt.zero_grad(set_to_none=True)
                        nonfinite = True
                        break
                    losses.append(loss)
                    kls.append(kl)
                    clipfracs.append(clipfrac)
                    # The KL of this forward is that of the policy about to be stepped: stop before
                    # a step that would start from a policy already too far from the sampler's.
                    if cfg.target_kl is not None and float(kl) > cfg.target_kl:
                        stopped = True
                        break
                    opt.step()
                    steps_taken += 1
                if stopped or nonfinite:
                    break
        nan = float("nan")
        return {
            f"policy_loss/{role}": float(torch.stack(losses).mean()) if losses else nan,
            f"approx_kl/{role}": float(kls[-1]) if kls else nan,
            f"clipfrac/{role}": float(torch.stack(clipfracs).mean()) if clipfracs else nan,
            f"optimizer_steps/{role}": float(steps_taken),
            f"kl_early_stop/{role}": float(stopped),
            f"nonfinite_skip/{role}": float(nonfinite),
        }

    def minibatch_backward(
        self, steps: AgentSteps, targets: AgentTargets, mb: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Accumulate the gradient of one minibatch, micro-batch by micro-batch (active adapter).

        Each micro-batch's loss is weighted by its share of the minibatch's real samples (actions,
        or tokens for token-level losses), so the accumulated gradient equals that of a single pass
        over the whole minibatch whatever the micro-batching.

        Returns:
            ``(policy_loss, approx_kl, clipfrac)`` of the minibatch, as detached scalars.
        """
        cfg, seq = self.cfg, steps.sequences
        sample_mask = targets.sample_mask
        if self.token_level:
            weights = seq.response_mask[mb].to(sample_mask.dtype) * sample_mask[mb, None]
        else:
            weights = sample_mask[mb]
        total = weights.sum().clamp(min=1.0)
        old_actions = None
        if not self.token_level:
            old_actions = action_logprob(
                steps.old_logprobs, seq.response_mask, steps.word_counts, cfg.logprob_norm
            )
        loss_sum = kl_sum = clip_sum = torch.zeros((), device=mb.device)
        # Rows without any real token (finished envs in episodic collection) carry no loss and would
        # trim to an empty sequence: leave them out before micro-batching.
        mb = mb[(seq.response_mask[mb].sum(-1) > 0) & (sample_mask[mb] > 0)]
        if mb.numel() == 0:
            zero = torch.zeros((), device=sample_mask.device)
            return zero, zero, zero
        for idx in micro_batches(mb, seq, cfg.micro_batch_size, cfg.micro_batch_tokens):
            t0 = time.perf_counter()
            batch = SequenceBatch(
                seq.prompt_ids[idx], seq.prompt_mask[idx], seq.response_ids[idx], seq.response_mask[idx]
            ).trimmed()
            L = batch.response_ids.shape[1]
            tok_lp, tok_ent = self.model.action_logprobs(
                batch,
                self.sampling.temperature,
                self.sampling.top_k,
                self.sampling.top_p,
                cfg.entropy_coef > 0,
            )
            tok_mask = batch.response_mask.to(tok_lp.dtype) * sample_mask[idx, None]
            if self.token_level:
                adv = targets.advantages[idx]
                adv = adv[:, :L] if adv.dim() == 2 else adv[:, None].expand(-1, L)
                out = self.policy_loss(tok_lp, steps.old_logprobs[idx, :L], adv, tok_mask, cfg.clip_eps)
                weight = tok_mask.sum()
            else:
                lp = action_logprob(tok_lp, batch.response_mask, steps.word_counts[idx], cfg.logprob_norm)
                out = self.policy_loss(
                    lp, old_actions[idx], targets.advantages[idx], sample_mask[idx], cfg.clip_eps
                )
                weight = sample_mask[idx].sum()
            loss = out.loss
            if cfg.entropy_coef:
                # Token-mean entropy of the micro-batch. For action-level losses the micro-batch is
                # weighted by its share of actions, so this bonus (only) depends slightly on the
                # micro-batching; the demo's and the benchmarks' figures were measured this way.
                loss = loss - cfg.entropy_coef * masked_mean(tok_ent, tok_mask)
            if cfg.kl_coef > 0 and cfg.kl_mode == "loss":
                kl_ref = kl_estimate(tok_lp, steps.ref_logprobs[idx, :L], cfg.kl_estimator)
                loss = loss + cfg.kl_coef * masked_mean(kl_ref, tok_mask)
            share = weight / total
            (loss * share).backward()
            self._fwd_bwd_s += time.perf_counter() - t0
            loss_sum = loss_sum + out.loss.detach() * share
            kl_sum = kl_sum + out.approx_kl * share
            clip_sum = clip_sum + out.clipfrac * share
        return loss_sum, kl_sum, clip_sum


@ALGORITHMS.register("appo")
class APPO(PolicyGradient):
    """Action-level PPO with one critic and agent-wise GAE (MARFT's APPO, Liao et al. 2025, Alg. 1).

    The critic values the state before each agent's action (base features, adapters disabled);
    :func:`~marft.algorithms.compute_agentwise_gae` passes credit through the agents in acting order.
    """

    critic = "last"

    def targets(self, rollout: Rollout, rewards: Tensor, result: UpdateResult) -> dict[str, AgentTargets]:
        cfg, head = self.cfg, self.model.value_head
        B, T, N = rewards.shape
        feats = torch.stack([a.features for a in rollout.agents], dim=1).reshape(B, T, N, -1)
        mask = rollout.action_mask
        rewards = self._bootstrap_truncation(rollout, rewards)
        with torch.no_grad():
            old_values = head(feats)  # [B, T, N]
            last_values = head(rollout.last_features)  # [B]
        advantages, returns = compute_agentwise_gae(
            rewards, old_values, rollout.dones, last_values, cfg.gamma, cfg.lam
        )
        advantages = self._fit_critic(feats, old_values, advantages, returns, mask, result)
        return {
            a.role: AgentTargets(advantages[:, :, a.index].reshape(-1), mask[:, :, a.index].reshape(-1))
            for a in self.graph.agents
        }


@ALGORITHMS.register("tppo")
class TPPO(PolicyGradient):
    """Token-level PPO (MARFT's TPPO): the critic values the state before every token, token-wise GAE
    (:func:`~marft.algorithms.compute_tokenwise_gae`) runs over tokens in acting order, and the
    clipped loss is a masked token-mean of per-token ratios."""

    critic = "tokens"
    token_level = True

    def targets(self, rollout: Rollout, rewards: Tensor, result: UpdateResult) -> dict[str, AgentTargets]:
        cfg, head = self.cfg, self.model.value_head
        B, T, N = rewards.shape
        feats = stack_agents([a.features for a in rollout.agents], B, T)  # [B, T, N, L, H]
        rewards = self._bootstrap_truncation(rollout, rewards)
        tok_mask = stack_agents([a.sequences.response_mask for a in rollout.agents], B, T)  # [B, T, N, L]
        tok_mask = tok_mask * rollout.action_mask[..., None].to(tok_mask.dtype)
        with torch.no_grad():
            old_values = head(feats) * tok_mask
            last_values = head(rollout.last_features)[:, 0]  # [B]
        advantages, returns = compute_tokenwise_gae(
            rewards,
            old_values,
            tok_mask,
            rollout.dones,
            last_values,
            cfg.gamma,
            cfg.lam,
            cfg.token_gamma,
            cfg.token_lam,
        )
        advantages = self._fit_critic(feats, old_values, advantages, returns, tok_mask, result)
        return {
            a.role: AgentTargets(
                advantages[:, :, a.index].reshape(B * T, -1), rollout.action_mask[:, :, a.index].reshape(-1)
            )
            for a in self.graph.agents
        }


class GroupRelative(PolicyGradient):
    """Critic-free, group-relative policy optimisation for teams (GRPO family; MAGRPO's joint credit).

    Each task instance is rolled out ``group_size`` times by the whole team. The team return of each
    rollout becomes an advantage within its group (``algorithm.advantage_estimator``, default: the
    algorithm's name), and every agent's every token in that rollout gets it (joint credit). With
    ``env.reward_assignment: per_agent`` each agent's own return is used instead. No critic exists.
    """

    token_level = True
    episodic = True
    default_estimator = "grpo"

    def __init__(
        self, cfg: AlgorithmConfig, sampling: SamplingConfig, model: TeamModel, graph: TeamGraph
    ) -> None:
        super().__init__(cfg, sampling, model, graph)
        self.estimator = ADVANTAGE_ESTIMATORS.get(cfg.advantage_estimator or self.default_estimator)

    def targets(self, rollout: Rollout, rewards: Tensor, result: UpdateResult) -> dict[str, AgentTargets]:
        B, T, N = rewards.shape
        mask = rollout.action_mask
        if rollout.per_agent_rewards:
            returns = (rewards * mask).sum(1)  # [B, N]
        else:
            # Team reward plus any KL penalty of all agents (rewards - rollout.rewards is the penalty).
            penalty = ((rewards - rollout.rewards) * mask).sum((1, 2))
            returns = (rollout.team_rewards * mask[:, :, 0]).sum(1) + penalty  # [B]
        advantages = self.estimator(returns, self.cfg.group_size)
        if advantages.dim() == 1:
            advantages = advantages[:, None].expand(B, N)
        result.metrics["group_return_std"] = float(
            returns.reshape(-1, self.cfg.group_size, *returns.shape[1:]).std(1).mean()
        )
        per_row = advantages[:, None, :].expand(B, T, N)  # every step of the rollout gets its advantage
        return {
            a.role: AgentTargets(per_row[:, :, a.index].reshape(-1), mask[:, :, a.index].reshape(-1))
            for a in self.graph.agents
        }


def _register_group(name: str, doc: str) -> type:
    cls = type(name.upper(), (GroupRelative,), {"default_estimator": name, "__doc__": doc})
    return ALGORITHMS.register(name)(cls)


_register_group("grpo", "GRPO for teams: group mean and std baseline (Shao et al. 2024).")
_register_group("dr_grpo", "Dr. GRPO for teams: group mean baseline, no std (Liu et al. 2025).")
_register_group("rloo", "RLOO for teams: leave-one-out group mean baseline (Ahmadian et al. 2024).")
_register_group("reinforce_pp", "REINFORCE++ for teams: returns normalised over the batch (Hu 2025).")
