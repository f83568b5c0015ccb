"""The critic's head: a small MLP on the frozen base's final hidden state (see :class:`TeamModel`)."""

from __future__ import annotations

from torch import Tensor, nn


class ValueHead(nn.Module):
    """The critic's head: ``[S, H]`` base features -> ``[S]`` values (float32)."""

    def __init__(self, hidden_size: int, width: int = 128) -> None:
        super().__init__()
        if width > 0:
            self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.Tanh(), nn.Linear(width, 1))
        else:
            self.net = nn.Sequential(nn.Linear(hidden_size, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.float()).squeeze(-1)
