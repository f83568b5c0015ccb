"""The trainer: the training loop as timed phases, checkpoints, evaluation and export."""

from marft.trainer.trainer import Trainer, train

__all__ = ["Trainer", "train"]
