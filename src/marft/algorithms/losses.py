"""Policy and value losses: pure functions on tensors.

``S`` is the number of samples (actions) in a micro-batch. All means are over real entries only
(``mask`` 1), so padding never counts.
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


@dataclass
class PolicyLoss:
    """Output of :func:`ppo_policy_loss`.

    Attributes:
        loss: scalar clipped surrogate loss (to minimise).
        approx_kl: scalar k3 estimate of KL(old || new), ``mean((r - 1) - log r)``.
        clipfrac: scalar fraction of entries whose ratio was clipped.
    """

    loss: Tensor
    approx_kl: Tensor
    clipfrac: Tensor


@POLICY_LOSSES.register("ppo_clip")
def ppo_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> PolicyLoss:
    """PPO clipped surrogate (Schulman et al. 2017), elementwise then masked mean.

    ``loss = mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))`` with ``r = exp(logprobs - old_logprobs)``.
    Per action (APPO) the inputs are ``[S]``; per token (TPPO, GRPO) they are ``[S, L]`` and the mean
    is the masked token-mean.

    Args:
        logprobs: ``[S]`` or ``[S, L]`` log-probs under the current policy (with grad).
        old_logprobs: same shape, under the policy that sampled them.
        advantages: same shape.
        mask: same shape, 1 for real entries.
        clip_eps: ratio clip.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_eps).to(ratio.dtype), mask)
    return PolicyLoss(loss=loss, approx_kl=approx_kl, clipfrac=clipfrac)


@POLICY_LOSSES.register("vanilla_pg")
def vanilla_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> PolicyLoss:
    """Unclipped importance-weighted policy gradient, ``mean(-A * r)``; on the first epoch
    (``r = 1``) its gradient is REINFORCE's. ``clip_eps`` only sets the reported clip fraction."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    loss = masked_mean(-advantages * ratio, mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_eps).to(ratio.dtype), mask)
    return PolicyLoss(loss=loss, approx_kl=approx_kl, clipfrac=clipfrac)


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
