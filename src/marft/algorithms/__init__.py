"""Pure algorithm math: advantage estimators, losses, KL. Imports nothing of models or envs."""

from marft.algorithms.advantages import (
    compute_agentwise_gae,
    compute_tokenwise_gae,
    dr_grpo_advantages,
    grpo_advantages,
    masked_mean,
    masked_normalize,
    masked_normalize_per_agent,
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
from marft.algorithms.group_baselines import GROUP_BASELINES, GroupBaseline, masked_group_advantages
from marft.algorithms.kl import kl_estimate
from marft.algorithms.losses import (
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    LossAggMode,
    LossInputs,
    PolicyLoss,
    action_logprob,
    agg_loss,
    agg_units,
    explained_variance,
    loss_inputs,
    ppo_policy_loss,
    regression_loss,
    value_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "GROUP_BASELINES",
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "AdvantageInputs",
    "AdvantageOutput",
    "Estimator",
    "EstimatorParams",
    "GroupBaseline",
    "LossAggMode",
    "LossInputs",
    "PolicyLoss",
    "action_logprob",
    "agg_loss",
    "agg_units",
    "compute_agentwise_gae",
    "compute_tokenwise_gae",
    "dr_grpo_advantages",
    "explained_variance",
    "grpo_advantages",
    "kl_estimate",
    "loss_inputs",
    "masked_group_advantages",
    "masked_mean",
    "masked_normalize",
    "masked_normalize_per_agent",
    "ppo_policy_loss",
    "regression_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "truncated_importance_weights",
    "value_loss",
]
