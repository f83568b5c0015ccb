"""Policy and value losses: pure functions on tensors.

``S`` is the number of samples (actions) in a micro-batch and ``L`` the longest response's length.
All means are over real entries only (``mask`` 1), so padding never counts.

A policy loss takes the log-prob ratio per token, or per action, and aggregates the elementwise
clipped objective into a scalar by a mode (``algorithm.loss_agg_mode``, verl's ``loss_agg_mode``):

* ``token-mean``: a ratio per token, the masked mean over every token;
* ``seq-mean-token-sum``: a ratio per token, summed over each sequence, the mean over sequences;
* ``action-mean``: a ratio per action (its tokens' log-probs summed, or length-normalised, by
  :func:`action_logprob`), the mean over actions.

:func:`loss_inputs` puts the token log-probs at the level of the mode's ratio; :func:`agg_units`
counts what the mode's mean divides by, so that a minibatch's loss is the sum of its micro-batches'
losses each weighted by its share of those units, whatever the micro-batching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from marft.algorithms.advantages import masked_mean
from marft.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")

LossAggMode = Literal["token-mean", "seq-mean-token-sum", "action-mean"]
LOSS_AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-sum", "action-mean")
"""The aggregation modes of a policy loss (see the module docstring)."""


@dataclass
class PolicyLoss:
    """Output of a policy loss (:data:`POLICY_LOSSES`).

    Attributes:
        loss: scalar aggregated loss (to minimise).
        approx_kl: scalar k3 estimate of KL(old || new), ``mean((r - 1) - log r)`` over the ratios.
        clipfrac: scalar fraction of ratios that were clipped.
    """

    loss: Tensor
    approx_kl: Tensor
    clipfrac: Tensor


@dataclass
class LossInputs:
    """A policy loss's inputs at the level of its ratio, all of one shape: ``[S]`` per action
    (``action-mean``) or ``[S, L]`` per token.

    Attributes:
        logprobs: under the current policy (with grad).
        old_logprobs: under the policy that sampled the actions.
        advantages: the advantages.
        mask: 1 on real entries.
    """

    logprobs: Tensor
    old_logprobs: Tensor
    advantages: Tensor
    mask: Tensor


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


def loss_inputs(
    mode: str,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    sample_mask: Tensor,
    word_counts: Tensor,
    norm: str,
) -> LossInputs:
    """The ratio's inputs of aggregation ``mode``: per action for ``action-mean``, else per token.

    Args:
        mode: a :data:`LOSS_AGG_MODES` entry.
        logprobs: ``[S, L]`` token log-probs under the current policy (0 on padding).
        old_logprobs: ``[S]`` each action's old log-prob (:func:`action_logprob`) for
            ``action-mean``, else ``[S, L']`` token log-probs (``L' >= L``, the first ``L`` used).
        advantages: ``[S]`` per action (every token of an action gets its action's), or ``[S, L']``
            per token (not with ``action-mean``).
        response_mask: ``[S, L]`` 1 on real tokens.
        sample_mask: ``[S]`` 1 where the agent really acted.
        word_counts: ``[S]`` words in each action (``norm=word_mean``).
        norm: how an action's log-prob is made of its tokens' (:func:`action_logprob`).
    """
    if mode == "action-mean":
        new = action_logprob(logprobs, response_mask, word_counts, norm)
        return LossInputs(new, old_logprobs, advantages, sample_mask)
    L = logprobs.shape[1]
    adv = advantages[:, :L] if advantages.dim() == 2 else advantages[:, None].expand(-1, L)
    mask = response_mask.to(logprobs.dtype) * sample_mask[:, None]
    return LossInputs(logprobs, old_logprobs[:, :L], adv, mask)


def agg_units(mode: str, response_mask: Tensor, sample_mask: Tensor) -> Tensor:
    """How many of the entries that ``mode``'s mean divides by each row holds: its real tokens
    (``token-mean``), or 1 per real action (``action-mean``) or per real sequence, one with a real
    token (``seq-mean-token-sum``).

    Args:
        response_mask: ``[S, L]`` 1 on real tokens.
        sample_mask: ``[S]`` 1 where the agent really acted.

    Returns:
        ``[S]`` (``sample_mask``'s dtype).
    """
    if mode == "token-mean":
        return (response_mask.to(sample_mask.dtype) * sample_mask[:, None]).sum(-1)
    if mode == "seq-mean-token-sum":
        return sample_mask * (response_mask.sum(-1) > 0).to(sample_mask.dtype)
    return sample_mask


def agg_loss(loss_mat: Tensor, mask: Tensor, mode: str) -> Tensor:
    """An elementwise loss aggregated into a scalar (verl's ``agg_loss``).

    Args:
        loss_mat: ``[S]`` per action (``action-mean``) or ``[S, L]`` per token.
        mask: same shape, 1 on real entries.
        mode: ``token-mean`` and ``action-mean``: the masked mean over every entry;
            ``seq-mean-token-sum``: each row's masked sum, then the mean over the rows with a real
            entry.
    """
    if mode == "seq-mean-token-sum":
        return masked_mean((loss_mat * mask).sum(-1), mask.sum(-1) > 0)
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of: {', '.join(LOSS_AGG_MODES)}")
    return masked_mean(loss_mat, mask)


def _with_ratio_stats(
    loss: Tensor, log_ratio: Tensor, ratio: Tensor, mask: Tensor, clip_eps: float
) -> PolicyLoss:
    """``loss`` with the k3 KL estimate and the clipped fraction: masked means over the ratios
    (any shape), without grad."""
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_eps).to(ratio.dtype), mask)
    return PolicyLoss(loss, approx_kl, clipfrac)


@POLICY_LOSSES.register("ppo_clip")
def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    agg_mode: str = "token-mean",
) -> PolicyLoss:
    """PPO clipped surrogate (Schulman et al. 2017), elementwise then aggregated (:func:`agg_loss`).

    ``max(-A * r, -A * clip(r, 1 - eps, 1 + eps))`` per entry, with ``r = exp(logprobs - old_logprobs)``.
    Per action (``action-mean``) the inputs are ``[S]``; per token they are ``[S, L]``.

    Args:
        logprobs: ``[S]`` or ``[S, L]`` log-probs under the current policy (with grad).
        old_logprobs: same shape, under the policy that sampled them.
        advantages: same shape.
        mask: same shape, 1 for real entries.
        clip_eps: ratio clip.
        agg_mode: a :data:`LOSS_AGG_MODES` entry.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = agg_loss(torch.maximum(unclipped, clipped), mask, agg_mode)
    return _with_ratio_stats(loss, log_ratio, ratio, mask, clip_eps)


@POLICY_LOSSES.register("vanilla_pg")
def vanilla_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    agg_mode: str = "token-mean",
) -> PolicyLoss:
    """Unclipped importance-weighted policy gradient, ``-A * r`` aggregated by ``agg_mode``; on the
    first epoch (``r = 1``) its gradient is REINFORCE's. ``clip_eps`` only sets the reported clip
    fraction. Shapes as :func:`ppo_policy_loss`."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    loss = agg_loss(-advantages * ratio, mask, agg_mode)
    return _with_ratio_stats(loss, log_ratio, ratio, mask, clip_eps)


def regression_loss(
    pred: Tensor, target: Tensor, kind: Literal["huber", "mse"], huber_delta: float = 1.0
) -> Tensor:
    """Elementwise ``0.5 * (pred - target)^2`` or the symmetric Huber loss with threshold ``delta``.

    Huber: ``0.5 e^2`` for ``|e| <= delta``, else ``delta * (|e| - 0.5 delta)`` (same on both sides).
    """
    if kind == "mse":
        return 0.5 * (pred - target) ** 2
    return F.huber_loss(pred, target, reduction="none", delta=huber_delta)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float | None,
    kind: Literal["huber", "mse"] = "huber",
    huber_delta: float = 1.0,
) -> Tensor:
    """Clipped value loss: ``mean(max(L(v, R), L(v_old + clip(v - v_old, -eps, eps), R)))``.

    Args:
        values: ``[S]`` current predictions (with grad).
        old_values: ``[S]`` predictions at rollout time.
        returns: ``[S]`` regression targets.
        mask: ``[S]`` 1 for real entries.
        clip_eps: clip of the change from ``old_values``; None disables clipping.
        kind: ``huber`` or ``mse``.
        huber_delta: Huber threshold.
    """
    loss = regression_loss(values, returns, kind, huber_delta)
    if clip_eps is not None:
        clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        loss = torch.maximum(loss, regression_loss(clipped, returns, kind, huber_delta))
    return masked_mean(loss, mask)


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """How much of the returns' variance the values explain, ``1 - var(returns - values) / var(returns)``
    (population variances, in float64; CleanRL's diagnostic): 1 for perfect values, 0 for a constant
    at the mean, negative for worse.

    Args:
        values: ``[M]`` the critic's predictions.
        returns: ``[M]`` its regression targets.

    Returns:
        NaN when the returns do not vary: none, or all equal up to float32 rounding at the scale of
        the returns and values (returns that are 0 up to rounding would give a ratio of noise).
    """
    if returns.numel() == 0:
        return float("nan")
    y, v = returns.detach().double(), values.detach().double()
    var_y = float(y.var(unbiased=False))
    scale = max(float(y.abs().max()), float(v.abs().max()))
    if var_y <= (1e-6 * scale) ** 2:
        return float("nan")
    return 1.0 - float((y - v).var(unbiased=False)) / var_y
