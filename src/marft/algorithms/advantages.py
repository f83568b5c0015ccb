"""Advantage computations: pure functions on tensors, no models, no envs (registered behind one
signature in :mod:`marft.algorithms.estimators`).

Shapes: ``B`` batch (env copies), ``T`` steps, ``N`` agents in acting order.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def masked_normalize_per_agent(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Standardise each agent's entries over its own real entries (agent-wise normalisation, as in
    Dr. MAS): :func:`masked_normalize` applied to every ``x[:, :, n]`` at once.

    Args:
        x: ``[B, T, N]`` or ``[B, T, N, L]``.
        mask: the same shape, 1 on real entries.

    Returns:
        The same shape; padding is 0. An agent with one real entry gets 0 there.
    """
    m = mask.to(x.dtype)
    dims = [d for d in range(x.dim()) if d != 2]
    n = m.sum(dims, keepdim=True)
    mean = (x * m).sum(dims, keepdim=True) / n.clamp(min=1.0)
    var = (((x - mean) * m) ** 2).sum(dims, keepdim=True) / (n - 1).clamp(min=1.0)
    return (x - mean) / (var.sqrt() + eps) * m


@dataclass
class ActionOrder:
    """Each env copy's actions in acting order: ``M = T * N`` positions, real actions first.

    Attributes:
        index: ``[B, M]`` the flat grid index ``t * N + n`` of the m-th action (after the real
            actions come the grid slots that hold none, in grid order).
        valid: ``[B, M]`` True for real actions.
        nonterminal: ``[B, M]`` True where no episode ended between the m-th action and the next
            one (for the last: the end of the trajectory, whose value it then bootstraps from).
        next_valid: ``[B, M]`` True where the next position is a real action (else the m-th is the
            last, and its next value is the one after the last step).
    """

    index: Tensor
    valid: Tensor
    nonterminal: Tensor
    next_valid: Tensor

    def gather(self, x: Tensor) -> Tensor:
        """``[B, T, N, *]`` -> ``[B, M, *]`` in acting order."""
        B, T, N = x.shape[:3]
        flat = x.reshape(B, T * N, *x.shape[3:])
        idx = self.index.reshape(B, T * N, *([1] * (x.dim() - 3))).expand_as(flat)
        return flat.gather(1, idx)

    def scatter(self, x: Tensor, shape: tuple[int, ...]) -> Tensor:
        """``[B, M, *]`` -> ``[B, T, N, *]`` (``shape``), zero where no action."""
        B = x.shape[0]
        x = x * self.valid.reshape(*self.valid.shape, *([1] * (x.dim() - 2))).to(x.dtype)
        idx = self.index.reshape(*self.index.shape, *([1] * (x.dim() - 2))).expand_as(x)
        return torch.zeros_like(x).scatter(1, idx, x).reshape(B, *shape[1:])


def action_order(dones: Tensor, turns: Tensor | None = None, n_agents: int | None = None) -> ActionOrder:
    """The order in which credit runs through the actions of each env copy.

    Actions are sorted by (step, generation call, agent index): the order they happened, agents
    that acted in the same call in acting order (Flex-MG's). Slots that hold no action (an agent
    not routed to, idle steps of finished episodes) are left out. The hand-over from one action to
    the next is cut when an episode ended at any step from the first's up to (not including) the
    next's; inside a step it is never cut.

    Args:
        dones: ``[B, T]`` 1 where the episode ended after step t.
        turns: ``[B, T, N]`` the generation call of each action (-1: none). None: every agent acted
            at every step, in acting order (the static graph).
        n_agents: N, needed when ``turns`` is None.
    """
    B, T = dones.shape
    if turns is None:
        turns = torch.zeros(B, T, n_agents, dtype=torch.long, device=dones.device)
    N = turns.shape[2]
    flat = turns.reshape(B, T * N)
    pos = torch.arange(T * N, device=flat.device)
    span = int(flat.max().clamp(min=0)) + 1
    key = torch.where(flat >= 0, ((pos // N) * span + flat) * N + pos % N, T * span * N + pos)
    index = key.argsort(dim=1, stable=True)
    valid = flat.gather(1, index) >= 0
    next_valid = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], dim=1)
    step = index // N
    next_step = torch.where(next_valid, torch.cat([step[:, 1:], step[:, :1]], dim=1), T)
    ended = torch.cat([torch.zeros_like(dones[:, :1]), dones.cumsum(1)], dim=1)  # [B, T+1]: before t
    nonterminal = valid & (ended.gather(1, next_step) == ended.gather(1, step))
    return ActionOrder(index, valid, nonterminal, next_valid)


def compute_agentwise_gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    last_values: Tensor,
    gamma: float,
    lam: float,
    turns: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Agent-wise GAE over each env copy's actions in acting order (:func:`action_order`).

    Credit flows backwards through the agents of a step and then into the previous step, as in
    MARFT's APPO (Liao et al. 2025, Sec. 4.2), but the chain is never cut inside a step: only a
    hand-over across an episode's end is multiplied by 0. With the static graph the order is
    (t, 0), (t, 1), ..., (t, N-1), (t+1, 0), ...; with routing it is the route actually taken
    (agents that did not act are skipped; an agent may act more than once in a team step).

    For the m-th action: ``next_value`` is the next action's value (``last_values`` after the
    last), ``nonterminal`` whether no episode ended in between;
    ``delta = r + gamma * nonterminal * next_value - value``;
    ``adv = delta + gamma * lam * nonterminal * next_adv``; ``returns = adv + values``.

    Args:
        rewards: ``[B, T, N]`` reward of each agent's action.
        values: ``[B, T, N]`` critic value of each agent's observation.
        dones: ``[B, T]`` 1 where the episode ended after step t.
        last_values: ``[B]`` value of the first agent's observation after the last step.
        gamma: discount per action.
        lam: GAE lambda.
        turns: ``[B, T, N]`` generation call of each action (-1: none); None: all acted in order.

    Returns:
        ``(advantages, returns)``, both ``[B, T, N]``; advantages are 0 where no action.
    """
    B, T, N = rewards.shape
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    rewards, values = rewards.to(dtype), values.to(dtype)
    order = action_order(dones, turns, N)
    r, v = order.gather(rewards), order.gather(values)  # [B, M]
    last = last_values.to(dtype)[:, None]
    next_values = torch.where(order.next_valid, torch.cat([v[:, 1:], last], dim=1), last)
    nonterminal = order.nonterminal.to(dtype)
    deltas = r + gamma * nonterminal * next_values - v
    carries = (order.nonterminal & order.next_valid).to(dtype)  # the last action starts the recursion
    # The recursion itself is sequential over actions, vectorised over the batch.
    advantages = torch.zeros_like(deltas)
    next_adv = torch.zeros(B, dtype=dtype, device=rewards.device)
    for m in range(T * N - 1, -1, -1):
        next_adv = deltas[:, m] + gamma * lam * carries[:, m] * next_adv
        advantages[:, m] = next_adv
    advantages = order.scatter(advantages, (B, T, N))
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
    turns: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-wise GAE over the token micro-steps of every action, actions in acting order (TPPO).

    Inside an action, token k before the last real token has no reward, next value the value of
    token k+1, and uses ``token_gamma`` / ``token_lam``. The last real token gets the action's
    reward and, like :func:`compute_agentwise_gae`, the next action's first-token value
    (``last_values`` after the last action), cut where an episode ended in between, with
    ``gamma`` / ``lam``. ``token_gamma=gamma, token_lam=lam`` reproduces the MARFT reference
    recursion; the defaults (1, 1) avoid its ``gamma^L`` decay across long actions.

    Tokens are vectorised: within an action the recursion has one constant factor, so it is a
    discounted reverse sum (one ``[L, L]`` matmul); only the hand-over between actions loops, over
    the ``T * N`` actions.

    Args:
        rewards: ``[B, T, N]`` reward of each action.
        values: ``[B, T, N, L]`` value of the state before each token.
        mask: ``[B, T, N, L]`` 1 on the real tokens of each action, which come first.
        dones: ``[B, T]`` 1 where the episode ended after step t.
        last_values: ``[B]`` value of the first agent's first token after the last step.
        gamma, lam: discount and GAE lambda between actions (at each action's last token).
        token_gamma, token_lam: the same inside an action.
        turns: ``[B, T, N]`` generation call of each action (-1: none); None: all acted in order.

    Returns:
        ``(advantages, returns)``, both ``[B, T, N, L]`` and zero where ``mask`` is 0.
    """
    B, T, N, L = values.shape
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    order = action_order(dones, turns, N)
    m = order.gather(mask.to(dtype))  # [B, M, L]
    values = order.gather(values.to(dtype)) * m
    rewards = order.gather(rewards.to(dtype))  # [B, M]
    n_tok = m.sum(-1).long()  # [B, M]
    last = (n_tok - 1).clamp(min=0)
    k = torch.arange(L, device=values.device)
    is_last = (k == last[..., None]).to(dtype) * m  # [B, M, L]
    inner = m - is_last  # real tokens that are not the last one

    first_values = values[..., 0]  # [B, M]
    after = last_values.to(dtype)[:, None]
    next_action_value = torch.where(order.next_valid, torch.cat([first_values[:, 1:], after], dim=1), after)
    nonterminal = order.nonterminal.to(dtype)

    # One-step TD errors of every token.
    next_token_value = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    bootstrap = (gamma * nonterminal * next_action_value)[..., None]
    deltas = inner * (token_gamma * next_token_value - values)
    deltas = deltas + is_last * (rewards[..., None] + bootstrap - values)

    # Discounted reverse sum inside each action: A_in[k] = sum_{j >= k} c^(j - k) delta_j.
    c = token_gamma * token_lam
    offsets = (k[None, :] - k[:, None]).to(dtype)  # [L(k), L(j)] = j - k
    discount = torch.where(offsets >= 0, torch.tensor(c, dtype=dtype).pow(offsets.clamp(min=0)), 0.0)
    within = deltas @ discount.T  # [B, M, L]

    # Hand-over between actions: the last token's running advantage continues into the next action.
    decay_to_last = torch.tensor(c, dtype=dtype).pow((last[..., None] - k).clamp(min=0).to(dtype))  # [B,M,L]
    link = gamma * lam * (order.nonterminal & order.next_valid).to(dtype)  # [B, M]
    within0, decay0 = within[..., 0], decay_to_last[..., 0]
    carry = torch.zeros(B, T * N, dtype=dtype, device=values.device)
    next_first_adv = torch.zeros(B, dtype=dtype, device=values.device)
    for a in range(T * N - 1, -1, -1):
        carry[:, a] = link[:, a] * next_first_adv
        next_first_adv = within0[:, a] + decay0[:, a] * carry[:, a]
    advantages = (within + decay_to_last * carry[..., None]) * m
    returns = (advantages + values) * m
    shape = (B, T, N, L)
    return order.scatter(advantages, shape), order.scatter(returns, shape)


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
    """Dr. GRPO (Liu et al. 2025): ``R - mean_group``, no division by the std. Shapes as
    :func:`grpo_advantages`."""
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
