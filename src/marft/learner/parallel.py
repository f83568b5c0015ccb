"""Data parallelism for the learner: G processes share each minibatch's rows and sum their gradients.

Every learner process computes the same targets from the same trajectory, draws the same
minibatch permutation (the trainer gives all of them one RNG state per iteration), and then takes
only its rows ``rank, rank + G, ...`` of each minibatch. A row's loss is normalised by the whole
minibatch's weight, so summing the G partial gradients (one ``all_reduce``) gives exactly the
gradient of one process over the whole minibatch, up to float summation order. The losses and KL
that steer early stopping are summed the same way, so every process takes the same decisions and
the adapters stay identical without ever being sent between learners.

With one process (:data:`SINGLE`) every method is the identity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world`` learners (``torch.distributed`` initialised when > 1)."""

    rank: int = 0
    world: int = 1

    def shard(self, rows: Tensor) -> Tensor:
        """This process's share of a minibatch's row indices (every ``world``-th, from ``rank``)."""
        return rows if self.world == 1 else rows[self.rank :: self.world]

    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum ``.grad`` over all learners, in place (a missing gradient counts as zeros)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))
            offset += n

    def sum(self, values: Tensor) -> Tensor:
        """A tensor summed over all learners (a new tensor)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        out = values.detach().clone()
        dist.all_reduce(out)
        return out


SINGLE = DataParallel()
