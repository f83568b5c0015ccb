"""Advantage computations: pure functions on tensors, no models, no envs (registered behind one
signature in :mod:`marft.algorithms.estimators`).

Shapes: ``B`` batch (env copies), ``T`` steps, ``N`` agents in acting order.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def compute_tokenwise_gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    dones: Tensor,
    last_values: Tensor,
    gamma: float,
    lam: float,
    token_gamma: float = 1.0,
    token_lam: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Token-wise GAE over the token micro-steps of every action, agents in acting order (TPPO).

    Inside agent i's action at step t, token k before the last real token has no reward, next
    value ``values[t, i, k+1]``, and uses ``token_gamma`` / ``token_lam``. The last real token gets
    ``rewards[t, i]`` and, like :func:`compute_agentwise_gae`, next value ``values[t, i+1, 0]`` for
    ``i < N-1`` (nothing cut) or ``values[t+1, 0, 0]`` / ``last_values`` for the last agent, cut by
    ``1 - dones[t]``, with ``gamma`` / ``lam``. ``token_gamma=gamma, token_lam=lam`` reproduces the
    MARFT reference recursion; the defaults (1, 1) avoid its ``gamma^L`` decay across long actions.

    Tokens are vectorised: within an action the recursion has one constant factor, so it is a
    discounted reverse sum (one ``[L, L]`` matmul); only the hand-over between actions loops, over
    the ``T * N`` actions.

    Args:
        rewards: ``[B, T, N]`` reward of each action.
        values: ``[B, T, N, L]`` value of the state before each token.
        mask: ``[B, T, N, L]`` 1 on the real tokens of each action, which come first; every action
            has at least one real token.
        dones: ``[B, T]`` 1 where the episode ended after step t.
        last_values: ``[B]`` value of agent 0's first token after the last step.
        gamma, lam: discount and GAE lambda between actions (at each action's last token).
        token_gamma, token_lam: the same inside an action.

    Returns:
        ``(advantages, returns)``, both ``[B, T, N, L]`` and zero where ``mask`` is 0.
    """
    B, T, N, L = values.shape
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    m = mask.to(dtype)
    values = values.to(dtype) * m
    n_tok = m.sum(-1).long()  # [B, T, N]
    last = (n_tok - 1).clamp(min=0)
    k = torch.arange(L, device=values.device)
    is_last = (k == last[..., None]).to(dtype) * m  # [B, T, N, L]
    inner = m - is_last  # real tokens that are not the last one

    first_values = values[..., 0]  # [B, T, N]
    next_first = torch.cat([first_values[:, 1:, 0], last_values.to(dtype)[:, None]], dim=1)  # [B, T]
    next_action_value = torch.cat([first_values[:, :, 1:], next_first[:, :, None]], dim=2)  # [B, T, N]
    nonterminal = torch.ones_like(rewards, dtype=dtype)
    nonterminal[:, :, N - 1] = 1.0 - dones.to(dtype)

    # One-step TD errors of every token.
    next_token_value = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    bootstrap = (gamma * nonterminal * next_action_value)[..., None]
    deltas = inner * (token_gamma * next_token_value - values)
    deltas = deltas + is_last * (rewards.to(dtype)[..., None] + bootstrap - values)

    # Discounted reverse sum inside each action: A_in[k] = sum_{j >= k} c^(j - k) delta_j.
    c = token_gamma * token_lam
    offsets = (k[None, :] - k[:, None]).to(dtype)  # [L(k), L(j)] = j - k
    discount = torch.where(offsets >= 0, torch.tensor(c, dtype=dtype).pow(offsets.clamp(min=0)), 0.0)
    within = deltas @ discount.T  # [B, T, N, L]

    # Hand-over between actions: the last token's running advantage continues into the next action.
    decay_to_last = torch.tensor(c, dtype=dtype).pow(
        (last[..., None] - k).clamp(min=0).to(dtype)
    )  # [B,T,N,L]
    link = gamma * lam * nonterminal  # [B, T, N]
    flat_within0 = within[..., 0].reshape(B, T * N)
    flat_decay0 = decay_to_last[..., 0].reshape(B, T * N)
    flat_link = link.reshape(B, T * N)
    carry = torch.zeros(B, T * N, dtype=dtype, device=values.device)
    next_first_adv = torch.zeros(B, dtype=dtype, device=values.device)
    for a in range(T * N - 1, -1, -1):
        carry[:, a] = flat_link[:, a] * next_first_adv
        next_first_adv = flat_within0[:, a] + flat_decay0[:, a] * carry[:, a]
    advantages = (within + decay_to_last * carry.reshape(B, T, N)[..., None]) * m
    return advantages, (advantages + values) * m


# ------------------------------------------------------------------------- group-relative (critic-free)


def _grouped(returns: Tensor, group_size: int) -> Tensor:
    if returns.shape[0] % group_size:
        raise ValueError(f"batch of {returns.shape[0]} rollouts is not a multiple of group_size={group_size}")
    return returns.reshape(returns.shape[0] // group_size, group_size, *returns.shape[1:])


def grpo_advantages(returns: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024): ``(R - mean_group) / (std_group + eps)``, unbiased std.

    Args:
        returns: ``[B, ...]`` return of each rollout; rows ``g*G .. g*G+G-1`` share a task instance.
        group_size: G.

    Returns:
        ``[B, ...]`` advantages.
    """
    g = _grouped(returns, group_size)
    std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
    return ((g - g.mean(dim=1, keepdim=True)) / (std + eps)).reshape(returns.shape)


def dr_grpo_advantages(returns: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """Dr. GRPO (Liu et al. 2025): ``R - mean_group``, no division by the std. Shapes as :func:`grpo_advantages`."""
    g = _grouped(returns, group_size)
    return (g - g.mean(dim=1, keepdim=True)).reshape(returns.shape)


def rloo_advantages(returns: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """RLOO (Ahmadian et al. 2024): ``R - mean of the other G-1 returns of the group``."""
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2")
    g = _grouped(returns, group_size)
    loo = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - loo).reshape(returns.shape)


def reinforce_pp_advantages(returns: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """REINFORCE++ (Hu 2025): returns normalised over the whole batch, ``(R - mean) / (std + eps)``."""
    std = returns.std() if returns.numel() > 1 else torch.zeros((), dtype=returns.dtype)
    return (returns - returns.mean()) / (std + eps)
