"""The learner: scoring a trajectory, advantages, the critic's fit and the policy update.

It composes the pure math of :mod:`marft.algorithms` with the team model; algorithms are
registered as :class:`AlgorithmSpec` objects (``ALGORITHMS``).
"""

from marft.learner.batching import PolicyBatch
from marft.learner.learner import Learner, Targets, UpdateResult
from marft.learner.policy import LossTerms
from marft.learner.scoring import Scorer, Scores
from marft.learner.spec import ALGORITHMS, AlgorithmSpec, ResolvedAlgorithm, ScoringNeeds, resolve_algorithm
from marft.learner.stats import (
    AdapterStats,
    AdvantageStats,
    AgentStats,
    CriticStats,
    LogprobGap,
    PolicyStats,
    ScoreStats,
    TisStats,
)

__all__ = [
    "ALGORITHMS",
    "AdapterStats",
    "AdvantageStats",
    "AgentStats",
    "AlgorithmSpec",
    "CriticStats",
    "Learner",
    "LogprobGap",
    "LossTerms",
    "PolicyBatch",
    "PolicyStats",
    "ResolvedAlgorithm",
    "ScoreStats",
    "Scorer",
    "Scores",
    "ScoringNeeds",
    "Targets",
    "TisStats",
    "UpdateResult",
    "resolve_algorithm",
]
