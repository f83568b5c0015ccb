"""KL estimators between the policy and the reference policy (pure functions).

With ``log_ratio = logprobs - ref_logprobs`` per sampled token (Schulman, "Approximating KL
divergence", 2020):

* ``k1 = log_ratio`` (unbiased, can be negative),
* ``k2 = 0.5 * log_ratio^2``,
* ``k3 = exp(-log_ratio) - 1 + log_ratio`` (unbiased for KL(pi || ref), always >= 0).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: KLEstimator = "k3") -> Tensor:
    """Per-token KL estimate; any shape (``[S, L]`` typically), elementwise."""
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of: k1, k2, k3")
