"""What an algorithm is, as one typed object: its advantage estimator and how its loss aggregates.

Everything else follows from the estimator (:class:`marft.algorithms.Estimator`): whether a critic
is built and what it values, whether rollouts are whole episodes in groups, and what the scoring
phase computes. No module reads algorithm flags; they read an :class:`AlgorithmSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from marft.algorithms import ADVANTAGE_ESTIMATORS, LOSS_AGG_MODES, Estimator, LossAggMode
from marft.config import AlgorithmConfig, ConfigError
from marft.registry import Registry


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm, declared.

    Attributes:
        estimator: the default advantage estimator (``marft.algorithms.ADVANTAGE_ESTIMATORS``);
            algorithms with a group estimator accept another one (``algorithm.advantage_estimator``).
        agg_mode: the policy loss's aggregation when ``algorithm.loss_agg_mode`` is null
            (``marft.algorithms.LOSS_AGG_MODES``): ``action-mean``, one ratio per action (sum or
            mean of its token log-probs); ``token-mean``, a ratio per token, masked token-mean.
        normalize_advantages: ``algorithm.normalize_advantages`` applies (critic-based advantages).
        description: one line for docs and errors.
    """

    estimator: str
    agg_mode: LossAggMode
    normalize_advantages: bool
    description: str


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm")

ALGORITHMS.register("appo")(
    AlgorithmSpec(
        "gae",
        "action-mean",
        True,
        "action-level PPO, one critic on the state before each action, agent-wise GAE (MARFT's APPO)",
    )
)
ALGORITHMS.register("tppo")(
    AlgorithmSpec(
        "token_gae",
        "token-mean",
        True,
        "token-level PPO, the critic valued before every token, token-wise GAE (MARFT's TPPO)",
    )
)
for _name, _what in (
    ("grpo", "group mean and std baseline (Shao et al. 2024)"),
    ("dr_grpo", "group mean baseline, no std (Liu et al. 2025)"),
    ("rloo", "leave-one-out group mean baseline (Ahmadian et al. 2024)"),
    ("reinforce_pp", "returns normalised over the batch (Hu 2025)"),
):
    ALGORITHMS.register(_name)(AlgorithmSpec(_name, "token-mean", False, f"critic-free, {_what}"))


@dataclass(frozen=True)
class ScoringNeeds:
    """What the scoring phase computes from a trajectory, declared once per run.

    Attributes:
        critic_features: base features for the critic: per ``action`` (the state before it), per
            ``token``, or ``none``.
        ref_logprobs: the reference policy's (bare base) log-probs of the sampled tokens (KL anchor).
        old_logprobs: recompute the sampled tokens' log-probs with the learner's own forward
            (half-precision bases, where the sampler's forward rounds differently).
    """

    critic_features: Literal["none", "action", "token"] = "none"
    ref_logprobs: bool = False
    old_logprobs: bool = False


@dataclass(frozen=True)
class ResolvedAlgorithm:
    """An algorithm spec with its estimator looked up and the config applied.

    Attributes:
        agg_mode: the policy loss's aggregation (``algorithm.loss_agg_mode``, else the spec's).
    """

    name: str
    spec: AlgorithmSpec
    estimator: Estimator
    agg_mode: LossAggMode

    @property
    def critic(self) -> bool:
        """Whether a critic (value head) is built."""
        return self.estimator.values != "none"

    @property
    def episodic(self) -> bool:
        """Whether rollouts are whole episodes, ``group_size`` per task instance."""
        return self.estimator.grouped

    def scoring_needs(
        self, cfg: AlgorithmConfig, half_precision_base: bool, kl: bool | None = None
    ) -> ScoringNeeds:
        """What the scoring phase computes; ``kl``: some agent has a KL term (None: whether
        ``algorithm.kl_coef`` > 0)."""
        recompute = cfg.recompute_old_logprobs
        return ScoringNeeds(
            critic_features=self.estimator.values,
            ref_logprobs=cfg.kl_coef > 0 if kl is None else kl,
            old_logprobs=half_precision_base if recompute is None else recompute,
        )


def resolve_algorithm(cfg: AlgorithmConfig) -> ResolvedAlgorithm:
    """The algorithm of ``algorithm.name`` with ``algorithm.advantage_estimator`` and
    ``algorithm.loss_agg_mode`` applied.

    Raises:
        KeyError: an unknown name (the message lists the choices).
        ConfigError: an aggregation that does not fit the estimator's advantages.
    """
    spec = ALGORITHMS.get(cfg.name)
    estimator = ADVANTAGE_ESTIMATORS.get(cfg.advantage_estimator or spec.estimator)
    agg_mode = cfg.loss_agg_mode or spec.agg_mode
    if agg_mode == "action-mean" and estimator.values == "token":
        # One ratio per action has no per-token advantage to weigh: the advantages would be lost.
        token_modes = [m for m in LOSS_AGG_MODES if m != "action-mean"]
        raise ConfigError(
            "algorithm.loss_agg_mode",
            f"{cfg.name}'s advantages are per token, so its ratio must be per token too: choose one "
            f"of {', '.join(token_modes)} (or null)",
        )
    return ResolvedAlgorithm(cfg.name, spec, estimator, agg_mode)
