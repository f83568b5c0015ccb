"""Advantage estimators: pure functions on tensors, no models, no envs.

Shapes: ``B`` batch (env copies), ``T`` steps, ``N`` agents in acting order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marft.registry import Registry

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1 (0 when the mask is empty)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_normalize(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Standardise ``x`` using the mean and (unbiased) std of the real entries only.

    Padding never counts in the statistics and is returned as 0.
    """
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp(min=1.0)
    var = (((x - mean) * m) ** 2).sum() / (n - 1).clamp(min=1.0)
    return (x - mean) / (var.sqrt() + eps) * m


@ADVANTAGE_ESTIMATORS.register("agentwise_gae")
def compute_agentwise_gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    last_values: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Agent-wise GAE over the micro-steps (t, 0), (t, 1), ..., (t, N-1), (t+1, 0), ...

    Credit flows backwards through the agents of a step and then into the previous step, as in
    MARFT's APPO (Liao et al. 2025, Sec. 4.2), but the chain is never cut inside a step: only the
    hand-over from the last agent of step t to the first agent of step t+1 is multiplied by
    ``1 - dones[t]``.

    For micro-step (t, i):
    ``next_value = values[t, i+1]`` and ``nonterminal = 1`` if ``i < N-1``, else
    ``next_value = values[t+1, 0]`` (``last_values`` after the last step) and
    ``nonterminal = 1 - dones[t]``;
    ``delta = r + gamma * nonterminal * next_value - value``;
    ``adv = delta + gamma * lam * nonterminal * next_adv``; ``returns = adv + values``.

    Args:
        rewards: ``[B, T, N]`` reward of each agent's action.
        values: ``[B, T, N]`` critic value of each agent's observation.
        dones: ``[B, T]`` 1 where the episode ended after step t.
        last_values: ``[B]`` value of agent 0's observation after the last step.
        gamma: discount per micro-step.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``[B, T, N]``.
    """
    B, T, N = rewards.shape
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    rewards, values = rewards.to(dtype), values.to(dtype)
    nonterm_step = 1.0 - dones.to(dtype)  # [B, T]
    # Next value of every micro-step: the next agent of the same step, or agent 0 of the next step.
    next_first = torch.cat([values[:, 1:, 0], last_values.to(dtype)[:, None]], dim=1)  # [B, T]
    next_values = torch.cat([values[:, :, 1:], next_first[:, :, None]], dim=2)  # [B, T, N]
    nonterminal = torch.ones_like(values)
    nonterminal[:, :, N - 1] = nonterm_step
    deltas = rewards + gamma * nonterminal * next_values - values
    # The recursion itself is sequential over micro-steps, vectorised over the batch.
    deltas, nonterminal = deltas.reshape(B, T * N), nonterminal.reshape(B, T * N)
    advantages = torch.zeros_like(deltas)
    next_adv = torch.zeros(B, dtype=dtype, device=rewards.device)
    for m in range(T * N - 1, -1, -1):
        next_adv = deltas[:, m] + gamma * lam * nonterminal[:, m] * next_adv
        advantages[:, m] = next_adv
    advantages = advantages.reshape(B, T, N)
    return advantages, advantages + values
