"""The policy step: per-adapter optimizers and micro-batched clipped updates of each adapter.

Every agent is trained on its own actions with its own adapter active on the shared frozen base;
agents that share one adapter (``lora.shared``) train it in one update on all their actions.
A minibatch's gradient is accumulated micro-batch by micro-batch, each weighted by its share of
the minibatch's real samples, so it equals one pass over the whole minibatch whatever the
micro-batching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from marft.algorithms import POLICY_LOSSES, kl_estimate
from marft.config import AlgorithmConfig, SamplingConfig
from marft.learner.batching import action_logprob, cat_rows, merge_actions, micro_batches, rows_of, sequences
from marft.learner.parallel import SINGLE, DataParallel
from marft.models.team_model import TeamModel
from marft.rollout.trajectory import AgentActions


@dataclass
class AgentTargets:
    """What one agent's policy update needs.

    Attributes:
        advantages: ``[S]`` per action, or ``[S, L]`` per token (``S = B * T``).
        sample_mask: ``[S]`` 1 where the agent really acted.
    """

    advantages: Tensor
    sample_mask: Tensor


@dataclass
class AgentBatch:
    """One agent's actions with the log-probs the loss compares against (``[S, L]`` each)."""

    actions: AgentActions
    old_logprobs: Tensor
    ref_logprobs: Tensor | None


def merge_agents(batches: list[AgentBatch], targets: list[AgentTargets]) -> tuple[AgentBatch, AgentTargets]:
    """Agents' batches and targets stacked row-wise (first agent's rows first): what one adapter
    shared by these agents trains on. One agent: returned as it is."""
    if len(batches) == 1:
        return batches[0], targets[0]
    refs = [b.ref_logprobs for b in batches]
    batch = AgentBatch(
        merge_actions([b.actions for b in batches]),
        cat_rows([b.old_logprobs for b in batches]),
        None if any(r is None for r in refs) else cat_rows(refs),
    )
    return batch, AgentTargets(
        cat_rows([t.advantages for t in targets]), cat_rows([t.sample_mask for t in targets])
    )


class PolicyUpdater:
    """Per-adapter AdamW optimizers and the clipped policy update of one adapter.

    Args:
        cfg: the algorithm's hyper-parameters.
        sampling: the sampling distribution (log-probs are taken under it).
        model: the team model.
        roles: the trainable agents (one optimizer per adapter they use).
        token_level: one ratio per token (masked token-mean) instead of one per action.
        dp: this process's share of the minibatches among data-parallel learners.
    """

    def __init__(
        self,
        cfg: AlgorithmConfig,
        sampling: SamplingConfig,
        model: TeamModel,
        roles: list[str],
        token_level: bool,
        dp: DataParallel = SINGLE,
    ) -> None:
        self.cfg, self.sampling, self.model, self.token_level = cfg, sampling, model, token_level
        self.dp = dp
        self.policy_loss = POLICY_LOSSES.get(cfg.policy_loss)
        self.optimizers = {
            name: torch.optim.AdamW(
                model.adapter_parameters(name), lr=cfg.policy_lr, weight_decay=cfg.weight_decay
            )
            for name in dict.fromkeys(model.adapter_name(r) for r in roles)
        }
        self.fwd_bwd_s = 0.0  # seconds in policy forwards and backwards since the last reset

    def update_adapter(self, role: str, batch: AgentBatch, targets: AgentTargets) -> dict[str, float]:
        """``ppo_epochs`` x ``num_minibatches`` steps of adapter ``role`` (an agent's, or the shared
        one on its agents' :func:`merge_agents` batch); its metrics by name."""
        cfg, model = self.cfg, self.model
        params, opt = model.adapter_parameters(role), self.optimizers[role]
        losses, kls, clipfracs = [], [], []
        steps_taken, stopped, nonfinite = 0, False, False
        n_rows = batch.actions.prompt_ids.shape[0]
        with model.adapter(role):
            model.policy.train()
            for _ in range(cfg.ppo_epochs):
                for mb in torch.randperm(n_rows, device=batch.actions.prompt_ids.device).chunk(
                    cfg.num_minibatches
                ):
                    opt.zero_grad(set_to_none=True)
                    loss, kl, clipfrac = self.minibatch_backward(batch, targets, mb)
                    self.dp.sum_gradients(params)
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
        self, batch: AgentBatch, targets: AgentTargets, mb: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Accumulate the gradient of one minibatch ``mb`` (row indices), micro-batch by
        micro-batch, with the agent's adapter active.

        Returns:
            ``(policy_loss, approx_kl, clipfrac)`` of the minibatch, as detached scalars.
        """
        cfg, seq = self.cfg, sequences(batch.actions)
        sample_mask = targets.sample_mask
        weights = (
            seq.response_mask[mb].to(sample_mask.dtype) * sample_mask[mb, None]
            if self.token_level
            else sample_mask[mb]
        )
        total = weights.sum().clamp(min=1.0)
        # The entropy bonus and the KL term are token means over the whole minibatch, whatever
        # the micro-batching (an action-level loss weighs micro-batches by actions, not tokens).
        tokens = (seq.response_mask[mb].to(sample_mask.dtype) * sample_mask[mb, None]).sum().clamp(min=1.0)
        old_actions = None
        if not self.token_level:
            old_actions = action_logprob(
                batch.old_logprobs, seq.response_mask, batch.actions.word_counts, cfg.logprob_norm
            )
        loss_sum = kl_sum = clip_sum = torch.zeros((), device=mb.device)
        # Rows without any real token (finished envs in episodic collection) carry no loss and would
        # trim to an empty sequence: leave them out before micro-batching.
        mb = mb[(seq.response_mask[mb].sum(-1) > 0) & (sample_mask[mb] > 0)]
        if mb.numel() == 0:
            zero = torch.zeros((), device=sample_mask.device)
            return zero, zero, zero
        # Data-parallel learners take every G-th row; the shares above are of the whole minibatch.
        for idx in micro_batches(self.dp.shard(mb), seq, cfg.micro_batch_size, cfg.micro_batch_tokens):
            t0 = time.perf_counter()
            out, weight = self._micro_batch_loss(batch, targets, old_actions, idx, seq, total / tokens)
            share = weight / total
            (out[0] * share).backward()
            self.fwd_bwd_s += time.perf_counter() - t0
            loss_sum = loss_sum + out[1].loss.detach() * share
            kl_sum = kl_sum + out[1].approx_kl * share
            clip_sum = clip_sum + out[1].clipfrac * share
        loss_sum, kl_sum, clip_sum = self.dp.sum(torch.stack([loss_sum, kl_sum, clip_sum]))
        return loss_sum, kl_sum, clip_sum

    def _micro_batch_loss(
        self, batch: AgentBatch, targets: AgentTargets, old_actions, idx: Tensor, seq, per_token: Tensor
    ):
        """``((total loss, policy-loss output), weight)`` of one micro-batch (with grad).
        ``per_token``: the minibatch's weight total over its real tokens (token terms' scale)."""
        cfg, sp = self.cfg, self.sampling
        sample_mask = targets.sample_mask
        rows = rows_of(seq, idx)
        L = rows.response_ids.shape[1]
        tok_lp, tok_ent = self.model.action_logprobs(
            rows, sp.temperature, sp.top_k, sp.top_p, cfg.entropy_coef > 0
        )
        tok_mask = rows.response_mask.to(tok_lp.dtype) * sample_mask[idx, None]
        if self.token_level:
            adv = targets.advantages[idx]
            adv = adv[:, :L] if adv.dim() == 2 else adv[:, None].expand(-1, L)
            out = self.policy_loss(tok_lp, batch.old_logprobs[idx, :L], adv, tok_mask, cfg.clip_eps)
            weight = tok_mask.sum()
        else:
            lp = action_logprob(tok_lp, rows.response_mask, batch.actions.word_counts[idx], cfg.logprob_norm)
            out = self.policy_loss(
                lp, old_actions[idx], targets.advantages[idx], sample_mask[idx], cfg.clip_eps
            )
            weight = sample_mask[idx].sum()
        loss = out.loss
        # Token terms are summed here and scaled so that, once the caller weighs this micro-batch
        # by weight / total, they are token means over the minibatch.
        scale = per_token / weight
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * (tok_ent * tok_mask).sum() * scale
        if cfg.kl_coef > 0 and cfg.kl_mode == "loss":
            kl_ref = kl_estimate(tok_lp, batch.ref_logprobs[idx, :L], cfg.kl_estimator)
            loss = loss + cfg.kl_coef * (kl_ref * tok_mask).sum() * scale
        return (loss, out), weight

    def state_dict(self) -> dict[str, dict]:
        return {r: o.state_dict() for r, o in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        missing = set(self.optimizers) - set(state)
        if missing:
            raise ValueError(
                f"the checkpoint has no optimizer state for adapters {sorted(missing)} "
                f"(it has {sorted(state)}; is lora.shared the same as the run's?)"
            )
        for role, opt in self.optimizers.items():
            opt.load_state_dict(state[role])
