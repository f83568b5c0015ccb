"""What an algorithm is, as one typed object: its advantage estimator and the level of its loss.

Everything else follows from the estimator (:class:`marft.algorithms.Estimator`): whether a critic
is built and what it values, whether rollouts are whole episodes in groups, and what the scoring
phase computes. No module reads algorithm flags; they read an :class:`AlgorithmSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from marft.algorithms import ADVANTAGE_ESTIMATORS, Estimator
from marft.config import AlgorithmConfig
from marft.registry import Registry


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm, declared.

    Attributes:
        estimator: the default advantage estimator (``marft.algorithms.ADVANTAGE_ESTIMATORS``);
            algorithms with a group estimator accept another one (``algorithm.advantage_estimator``).
        loss_level: ``action``: one ratio per action (sum or mean of its token log-probs);
            ``token``: a ratio per token, masked token-mean.
        normalize_advantages: ``algorithm.normalize_advantages`` applies (critic-based advantages).
        description: one line for docs and errors.
    """

    estimator: str
    loss_level: Literal["action", "token"]
    normalize_advantages: bool
    description: str


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm")

ALGORITHMS.register("appo")(
    AlgorithmSpec(
        "gae",
        "action",
        True,
        "action-level PPO, one critic on the state before each action, agent-wise GAE (MARFT's APPO)",
    )
)
ALGORITHMS.register("tppo")(
    AlgorithmSpec(
        "token_gae",
        "token",
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
    ALGORITHMS.register(_name)(AlgorithmSpec(_name, "token", False, f"critic-free, {_what}"))


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
    """An algorithm spec with its estimator looked up and the config applied."""

    name: str
    spec: AlgorithmSpec
    estimator: Estimator

    @property
    def critic(self) -> bool:
        """Whether a critic (value head) is built."""
        return self.estimator.values != "none"

    @property
    def episodic(self) -> bool:
        """Whether rollouts are whole episodes, ``group_size`` per task instance."""
        return self.estimator.grouped

    def scoring_needs(self, cfg: AlgorithmConfig, half_precision_base: bool) -> ScoringNeeds:
        recompute = cfg.recompute_old_logprobs
        return ScoringNeeds(
            critic_features=self.estimator.values,
            ref_logprobs=cfg.kl_coef > 0,
            old_logprobs=half_precision_base if recompute is None else recompute,
        )


def resolve_algorithm(cfg: AlgorithmConfig) -> ResolvedAlgorithm:
    """The algorithm of ``algorithm.name`` with ``algorithm.advantage_estimator`` applied.

    Raises:
        KeyError: an unknown name (the message lists the choices).
    """
    spec = ALGORITHMS.get(cfg.name)
    estimator = ADVANTAGE_ESTIMATORS.get(cfg.advantage_estimator or spec.estimator)
    return ResolvedAlgorithm(cfg.name, spec, estimator)
