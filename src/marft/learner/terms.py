"""A policy minibatch's loss terms, from log-probs already computed (no model here).

A minibatch's gradient is accumulated micro-batch by micro-batch, each micro-batch's terms weighted
by its share of the minibatch's units of ``algorithm.loss_agg_mode`` (real tokens, actions or
sequences: :func:`marft.algorithms.agg_units`), so the sum equals one pass over the whole
minibatch whatever the micro-batching. The entropy and KL terms are token means over the whole
minibatch in every mode (:class:`MinibatchNorm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from marft.algorithms import PolicyLoss, agg_units, kl_estimate
from marft.config import AlgorithmConfig
from marft.learner.batching import PolicyBatch
from marft.models.sequences import SequenceBatch


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

    def stacked(self) -> Tensor:
        """``[4]``: loss, policy loss, approximate KL, clip fraction (detached)."""
        return torch.stack([self.loss.detach(), self.policy_loss, self.approx_kl, self.clipfrac])

    @classmethod
    def of_stacked(cls, values: Tensor) -> LossTerms:
        """The terms of :meth:`stacked`'s ``[4]`` layout."""
        return cls(values[0], values[1], values[2], values[3])


@dataclass
class MinibatchNorm:
    """What a minibatch's terms are normalised by (each at least 1).

    Attributes:
        units: its units of the aggregation mode (:func:`marft.algorithms.agg_units`).
        tokens: its real tokens (the entropy and KL terms are token means).
    """

    units: Tensor
    tokens: Tensor

    @classmethod
    def of(cls, mode: str, response_mask: Tensor, sample_mask: Tensor) -> MinibatchNorm:
        """The norm of a minibatch's rows: their ``[M, L]`` response mask and ``[M]`` sample mask."""
        tokens = (response_mask.to(sample_mask.dtype) * sample_mask[:, None]).sum().clamp(min=1.0)
        units = agg_units(mode, response_mask, sample_mask).sum().clamp(min=1.0)
        return cls(units, tokens)


LossFn = Callable[[Tensor, Tensor, Tensor, Tensor, float, str], PolicyLoss]
"""A registered policy loss (:data:`marft.algorithms.POLICY_LOSSES`)."""


def micro_batch_terms(
    cfg: AlgorithmConfig,
    mode: str,
    policy_loss: LossFn,
    batch: PolicyBatch,
    old: Tensor,
    idx: Tensor,
    rows: SequenceBatch,
    logprobs: Tensor,
    entropy: Tensor | None,
    norm: MinibatchNorm,
) -> LossTerms:
    """The loss terms of rows ``idx`` of ``batch`` (with grad through ``logprobs`` and
    ``entropy``), weighted by their share of the minibatch's units, so that their sum over the
    micro-batches is the minibatch's.

    Args:
        cfg: the algorithm's coefficients (``clip_eps``, ``entropy_coef``, ``kl_coef`` unless the
            batch has its own, ...).
        mode: the loss's aggregation (``marft.algorithms.LOSS_AGG_MODES``).
        policy_loss: the registered clipped objective.
        batch: the adapter's batch (``S`` rows).
        old: :meth:`PolicyBatch.ratio_old_logprobs` of the batch (``[S]`` or ``[S, L]``).
        idx: ``[m]`` the rows.
        rows: their sequences (``[m, L']`` responses, possibly trimmed).
        logprobs: ``[m, L']`` their token log-probs under the current policy.
        entropy: ``[m, L']`` their entropies in the graph (an entropy bonus), or None.
        norm: the minibatch's :class:`MinibatchNorm`.
    """
    inputs = batch.loss_inputs(mode, idx, rows, logprobs, old, cfg.logprob_norm)
    pg = policy_loss(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, cfg.clip_eps, mode)
    sample_mask = batch.sample_mask[idx]
    weight = agg_units(mode, rows.response_mask, sample_mask).sum()
    # Token terms are summed here and scaled so that, once this micro-batch is weighed by
    # weight / units, they are token means over the minibatch.
    scale = norm.units / norm.tokens / weight
    token_mask = rows.response_mask.to(logprobs.dtype) * sample_mask[:, None]  # [m, L']
    loss = pg.loss
    if entropy is not None:
        loss = loss - cfg.entropy_coef * (entropy * token_mask).sum() * scale
    kl_coef = cfg.kl_coef if batch.kl_coef is None else batch.kl_coef
    if kl_coef > 0 and cfg.kl_mode == "loss":
        kl_ref = kl_estimate(logprobs, batch.ref_logprobs[idx, : logprobs.shape[1]], cfg.kl_estimator)
        loss = loss + kl_coef * (kl_ref * token_mask).sum() * scale
    share = weight / norm.units
    return LossTerms(loss * share, pg.loss.detach() * share, pg.approx_kl * share, pg.clipfrac * share)
