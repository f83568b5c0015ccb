"""Fitting the critic: the value head's regression on the advantage phase's returns, its own step
of an iteration (computing the targets never changes the critic)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from marft.algorithms import explained_variance, masked_mean, value_loss
from marft.config import AlgorithmConfig
from marft.learner.parallel import SINGLE, DataParallel
from marft.learner.stats import NAN, CriticStats
from marft.models.value_head import ValueHead


@dataclass
class CriticBatch:
    """What the critic regresses on, with the shapes of the advantages.

    Attributes:
        features: ``[..., H]`` base features (``[B, T, N, H]``, or ``[B, T, N, L, H]`` per token).
        old_values: ``[...]`` the critic's values before this iteration's fit.
        returns: ``[...]`` regression targets.
        mask: ``[...]`` 1 on real entries.
    """

    features: Tensor
    old_values: Tensor
    returns: Tensor
    mask: Tensor


class CriticFitter:
    """The value head's optimizer and its epochs (``ppo_epochs`` x ``num_minibatches``); with
    data-parallel learners each takes every G-th entry of a minibatch and the gradients are summed."""

    def __init__(self, head: ValueHead, cfg: AlgorithmConfig, dp: DataParallel = SINGLE) -> None:
        self.head, self.cfg, self.dp = head, cfg, dp
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay)

    def fit(self, batch: CriticBatch) -> CriticStats:
        """Train on the real entries; the fit's stats (the values' explained variance is that of
        the values before the fit)."""
        real = batch.mask.bool()
        losses: list[Tensor] = []
        nonfinite = self._epochs(batch.features[real], batch.old_values[real], batch.returns[real], losses)
        return CriticStats(
            value_loss=float(torch.stack(losses).mean()) if losses else NAN,
            nonfinite=nonfinite,
            value_mean=float(masked_mean(batch.old_values, batch.mask)),
            return_target_mean=float(masked_mean(batch.returns, batch.mask)),
            explained_variance=explained_variance(batch.old_values[real], batch.returns[real]),
        )

    def _epochs(self, feats: Tensor, old_values: Tensor, returns: Tensor, losses: list[Tensor]) -> bool:
        """``feats [M, H]``, ``old_values``/``returns [M]``: the optimizer steps, each step's loss
        appended to ``losses``; whether they stopped at a non-finite loss or gradient."""
        cfg = self.cfg
        ones = torch.ones_like(old_values)
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(feats.shape[0], device=feats.device)
            for idx in perm.chunk(cfg.num_minibatches):
                self.optimizer.zero_grad(set_to_none=True)
                mine = self.dp.shard(idx)
                loss = torch.zeros((), device=feats.device)
                if len(mine):  # this learner's share of the minibatch mean
                    v = self.head(feats[mine])
                    loss = value_loss(
                        v,
                        old_values[mine],
                        returns[mine],
                        ones[mine],
                        cfg.value_clip_eps,
                        cfg.value_loss,
                        cfg.huber_delta,
                    ) * (len(mine) / len(idx))
                    loss.backward()
                self.dp.sum_gradients(self.head.parameters())
                loss = self.dp.sum(loss.detach())
                norm = torch.nn.utils.clip_grad_norm_(self.head.parameters(), cfg.max_grad_norm)
                if not (torch.isfinite(loss) and torch.isfinite(norm)):
                    self.optimizer.zero_grad(set_to_none=True)
                    return True
                self.optimizer.step()
                losses.append(loss.detach())
        return False
