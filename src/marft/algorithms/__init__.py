"""Pure algorithm math: advantage estimators, losses, KL. Imports nothing of models or envs."""

from marft.algorithms.advantages import (
    compute_agentwise_gae,
    compute_tokenwise_gae,
    dr_grpo_advantages,
    grpo_advantages,
    masked_mean,
    masked_normalize,
    reinforce_pp_advantages,
    rloo_advantages,
)
from marft.algorithms.correction import truncated_importance_weights
from marft.algorithms.estimators import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    AdvantageOutput,
    Estimator,
    EstimatorParams,
)
from marft.algorithms.kl import kl_estimate
from marft.algorithms.losses import POLICY_LOSSES, PolicyLoss, ppo_policy_loss, regression_loss, value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "AdvantageInputs",
    "AdvantageOutput",
    "Estimator",
    "EstimatorParams",
    "PolicyLoss",
    "compute_agentwise_gae",
    "compute_tokenwise_gae",
    "dr_grpo_advantages",
    "grpo_advantages",
    "kl_estimate",
    "masked_mean",
    "masked_normalize",
    "ppo_policy_loss",
    "regression_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "truncated_importance_weights",
    "value_loss",
]
