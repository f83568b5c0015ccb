"""Pure algorithm math: advantage estimators and losses. Imports nothing of models or envs."""

from marft.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_agentwise_gae,
    masked_mean,
    masked_normalize,
)
from marft.algorithms.losses import PolicyLoss, ppo_policy_loss, regression_loss, value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "PolicyLoss",
    "compute_agentwise_gae",
    "masked_mean",
    "masked_normalize",
    "ppo_policy_loss",
    "regression_loss",
    "value_loss",
]
