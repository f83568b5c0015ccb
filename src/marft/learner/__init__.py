"""The learner: scoring a trajectory, advantages, the critic's fit and the policy update.

It composes the pure math of :mod:`marft.algorithms` with the team model; algorithms are
registered as :class:`AlgorithmSpec` objects (``ALGORITHMS``).
"""

from marft.learner.learner import Learner, Targets, UpdateResult
from marft.learner.scoring import Scorer, Scores
from marft.learner.spec import ALGORITHMS, AlgorithmSpec, ResolvedAlgorithm, ScoringNeeds, resolve_algorithm

__all__ = [
    "ALGORITHMS",
    "AlgorithmSpec",
    "Learner",
    "ResolvedAlgorithm",
    "Scorer",
    "Scores",
    "ScoringNeeds",
    "Targets",
    "UpdateResult",
    "resolve_algorithm",
]
