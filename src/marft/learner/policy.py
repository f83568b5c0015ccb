"""The policy step: per-adapter optimizers and micro-batched clipped updates of each adapter.

Every agent is trained on its own actions with its own adapter active on the shared frozen base;
agents that share one adapter (``lora.shared``) train it in one update on all their actions
(:meth:`~marft.learner.batching.PolicyBatch.merge`).

One path computes a micro-batch's loss (:meth:`PolicyUpdater.micro_batch_loss`): the token
log-probs and entropies under the adapter, the ratio at the level of ``algorithm.loss_agg_mode``
(:func:`marft.algorithms.loss_inputs`: per token, or per action for ``action-mean``), the
registered clipped objective aggregated by that mode, the entropy bonus and the KL term to the
reference. A minibatch's gradient is accumulated micro-batch by micro-batch, each weighted by its
share of the minibatch's units of the mode (real tokens, actions or sequences:
:func:`marft.algorithms.agg_units`), so it equals one pass over the whole minibatch whatever the
micro-batching. The entropy and KL terms are token means over the whole minibatch in every mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from marft.algorithms import POLICY_LOSSES, agg_units, kl_estimate
from marft.config import AlgorithmConfig
from marft.learner.batching import PolicyBatch, micro_batches, rows_of, sequences
from marft.learner.parallel import SINGLE, DataParallel
from marft.learner.stats import AdapterStats
from marft.models.logprobs import SamplingParams
from marft.models.team_model import TeamModel

Stop = Literal["target_kl", "nonfinite"]
"""Why an adapter's epochs ended early."""


@dataclass
class LossTerms:
    """A policy loss's scalars: of a micro-batch, weighted by its share of its minibatch, or of a
    minibatch (the sum of its micro-batches').

    Attributes:
        loss: what is minimised: the policy loss, minus ``entropy_coef`` times the token-mean
            entropy, plus ``kl_coef`` times the token-mean KL to the reference (``kl_mode=loss``);
            with grad in a micro-batch.
        policy_loss: the aggregated clipped objective alone.
        approx_kl: the k3 estimate of KL(old || new) over the ratios.
        clipfrac: the fraction of ratios that were clipped.
    """

    loss: Tensor
    policy_loss: Tensor
    approx_kl: Tensor
    clipfrac: Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> LossTerms:
        """Every term 0 (an empty minibatch, or the start of a sum)."""
        zero = torch.zeros((), device=device)
        return cls(zero, zero, zero, zero)

    def __add__(self, other: LossTerms) -> LossTerms:
        """The sum, ``other`` detached."""
        return LossTerms(
            self.loss + other.loss.detach(),
            self.policy_loss + other.policy_loss,
            self.approx_kl + other.approx_kl,
            self.clipfrac + other.clipfrac,
        )


@dataclass
class MinibatchNorm:
    """What a minibatch's terms are normalised by (each at least 1).

    Attributes:
        units: its units of the aggregation mode (:func:`marft.algorithms.agg_units`).
        tokens: its real tokens (the entropy and KL terms are token means).
    """

    units: Tensor
    tokens: Tensor


class PolicyUpdater:
    """Per-adapter AdamW optimizers and the clipped policy update of one adapter.

    Args:
        cfg: the algorithm's hyper-parameters.
        sampling: the sampling distribution (log-probs are taken under it).
        model: the team model.
        roles: the trainable agents (one optimizer per adapter they use).
        agg_mode: the policy loss's aggregation (``marft.algorithms.LOSS_AGG_MODES``).
        dp: this process's share of the minibatches among data-parallel learners.
    """

    def __init__(
        self,
        cfg: AlgorithmConfig,
        sampling: SamplingParams,
        model: TeamModel,
        roles: list[str],
        agg_mode: str,
        dp: DataParallel = SINGLE,
    ) -> None:
        self.cfg = cfg
        self.sampling = sampling
        self.model = model
        self.agg_mode = agg_mode
        self.dp = dp
        self.policy_loss = POLICY_LOSSES.get(cfg.policy_loss)
        self.optimizers = {
            name: torch.optim.AdamW(
                model.adapter_parameters(name), lr=cfg.policy_lr, weight_decay=cfg.weight_decay
            )
            for name in dict.fromkeys(model.adapter_name(r) for r in roles)
        }
        self.fwd_bwd_s = 0.0  # seconds in policy forwards and backwards since the last reset

    def update_adapter(self, name: str, batch: PolicyBatch) -> AdapterStats:
        """``ppo_epochs`` x ``num_minibatches`` steps of adapter ``name`` (an agent's, or the shared
        one on its agents' merged batch); they end early past ``target_kl`` or at a non-finite loss
        or gradient (the whole update is then skipped this iteration)."""
        rows = batch.actions.prompt_ids
        params = self.model.adapter_parameters(name)
        taken: list[LossTerms] = []  # every minibatch stepped on, or stopped at for its KL
        stop: Stop | None = None
        with self.model.adapter(name):
            self.model.policy.train()
            for _ in range(self.cfg.ppo_epochs):
                for mb in torch.randperm(rows.shape[0], device=rows.device).chunk(self.cfg.num_minibatches):
                    stop = self._step(name, params, batch, mb, taken)
                    if stop is not None:
                        break
                if stop is not None:
                    break
        nan = float("nan")
        return AdapterStats(
            policy_loss=float(torch.stack([t.policy_loss for t in taken]).mean()) if taken else nan,
            approx_kl=float(taken[-1].approx_kl) if taken else nan,
            clipfrac=float(torch.stack([t.clipfrac for t in taken]).mean()) if taken else nan,
            optimizer_steps=len(taken) - (stop == "target_kl"),
            kl_early_stop=stop == "target_kl",
            nonfinite=stop == "nonfinite",
        )

    def _step(
        self, name: str, params: list[Tensor], batch: PolicyBatch, mb: Tensor, taken: list[LossTerms]
    ) -> Stop | None:
        """One optimizer step of adapter ``name`` (its ``params``) on minibatch ``mb`` (its terms
        appended to ``taken`` when finite); why the epochs must stop, if they must."""
        cfg = self.cfg
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        terms = self.minibatch_backward(batch, mb)
        self.dp.sum_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if not (torch.isfinite(terms.policy_loss) and torch.isfinite(grad_norm)):
            # One bad step would poison the adapter and Adam's moments for good: skip this
            # adapter's whole update this iteration; the trainer counts these.
            opt.zero_grad(set_to_none=True)
            return "nonfinite"
        taken.append(terms)
        # The KL of this forward is that of the policy about to be stepped: stop before a step
        # that would start from a policy already too far from the sampler's.
        if cfg.target_kl is not None and float(terms.approx_kl) > cfg.target_kl:
            return "target_kl"
        opt.step()
        return None

    def minibatch_backward(self, batch: PolicyBatch, mb: Tensor) -> LossTerms:
        """Accumulate the gradient of minibatch ``mb`` (row indices of ``batch``), micro-batch by
        micro-batch, with the adapter active; its loss terms (detached, summed over data-parallel
        learners)."""
        cfg, mode = self.cfg, self.agg_mode
        seq = sequences(batch.actions)
        sample_mask = batch.sample_mask
        tokens = (seq.response_mask[mb].to(sample_mask.dtype) * sample_mask[mb, None]).sum().clamp(min=1.0)
        units = agg_units(mode, seq.response_mask[mb], sample_mask[mb]).sum().clamp(min=1.0)
        norm = MinibatchNorm(units, tokens)
        old = batch.ratio_old_logprobs(mode, cfg.logprob_norm)
        terms = LossTerms.zeros(mb.device)
        # Rows without any real token (finished envs in episodic collection) carry no loss and would
        # trim to an empty sequence: leave them out before micro-batching.
        mb = mb[(seq.response_mask[mb].sum(-1) > 0) & (sample_mask[mb] > 0)]
        if mb.numel() == 0:
            return LossTerms.zeros(sample_mask.device)
        # Data-parallel learners take every G-th row; the shares above are of the whole minibatch.
        for idx in micro_batches(self.dp.shard(mb), seq, cfg.micro_batch_size, cfg.micro_batch_tokens):
            t0 = time.perf_counter()
            part = self.micro_batch_loss(batch, old, idx, norm)
            part.loss.backward()
            self.fwd_bwd_s += time.perf_counter() - t0
            terms = terms + part
        summed = self.dp.sum(torch.stack([terms.loss, terms.policy_loss, terms.approx_kl, terms.clipfrac]))
        return LossTerms(summed[0], summed[1], summed[2], summed[3])

    def micro_batch_loss(
        self, batch: PolicyBatch, old: Tensor, idx: Tensor, norm: MinibatchNorm
    ) -> LossTerms:
        """The loss terms of rows ``idx`` of ``batch`` (with grad), weighted by their share of the
        minibatch's units, so that their sum over the micro-batches is the minibatch's.

        ``old``: :meth:`PolicyBatch.ratio_old_logprobs` (``[S]`` or ``[S, L]``).
        """
        cfg, mode = self.cfg, self.agg_mode
        rows = rows_of(sequences(batch.actions), idx)
        bonus = cfg.entropy_coef > 0
        logprobs, entropy = self.model.action_logprobs(rows, self.sampling, entropy=bonus, entropy_grad=bonus)
        sample_mask = batch.sample_mask[idx]
        inputs = batch.loss_inputs(mode, idx, rows, logprobs, old, cfg.logprob_norm)
        pg = self.policy_loss(
            inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, cfg.clip_eps, mode
        )
        weight = agg_units(mode, rows.response_mask, sample_mask).sum()
        # Token terms are summed here and scaled so that, once this micro-batch is weighed by
        # weight / units, they are token means over the minibatch.
        scale = norm.units / norm.tokens / weight
        token_mask = rows.response_mask.to(logprobs.dtype) * sample_mask[:, None]  # [m, L]
        loss = pg.loss
        if bonus:
            loss = loss - cfg.entropy_coef * (entropy * token_mask).sum() * scale
        if cfg.kl_coef > 0 and cfg.kl_mode == "loss":
            kl_ref = kl_estimate(logprobs, batch.ref_logprobs[idx, : logprobs.shape[1]], cfg.kl_estimator)
            loss = loss + cfg.kl_coef * (kl_ref * token_mask).sum() * scale
        share = weight / norm.units
        return LossTerms(loss * share, pg.loss.detach() * share, pg.approx_kl * share, pg.clipfrac * share)

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
