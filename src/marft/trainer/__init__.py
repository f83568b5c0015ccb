"""The trainer composes models, team, envs, rollouts and algorithms into a run."""

from marft.trainer.algorithms import ALGORITHMS, APPO, UpdateResult
from marft.trainer.trainer import Trainer, train

__all__ = ["ALGORITHMS", "APPO", "Trainer", "UpdateResult", "train"]
