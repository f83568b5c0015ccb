"""The other data-parallel learners of a run (``run.ray.learners > 1``), as one small part.

Each update is bracketed: the other learners start on the iteration's trajectory before this
process scores it, and finish (their gradients summed with this process's) after the policy
phase. A failure of any learner stops the run with a message that says how to continue it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from marft.config import Config
from marft.learner.parallel import SINGLE, DataParallel
from marft.rollout.trajectory import Trajectory
from marft.trainer.outcome import TrainingStopped

if TYPE_CHECKING:
    from marft.distributed.learners import RayLearners


class LearnerPeers:
    """The Ray learner actors of learners 1..G-1, or none (one learner: this process).

    Attributes:
        learners: the actors, or None with one learner.
    """

    def __init__(self, learners: RayLearners | None = None) -> None:
        self.learners = learners

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> LearnerPeers:
        """The peers ``run.ray`` asks for (none unless Ray runs more than one learner)."""
        if not (cfg.run.ray.enabled and cfg.run.ray.learners > 1):
            return cls()
        from marft.distributed.learners import RayLearners

        return cls(RayLearners(cfg, device))

    @property
    def dp(self) -> DataParallel:
        """This process's place among the learners."""
        return self.learners.dp if self.learners is not None else SINGLE

    def sync_from(self, model, learner) -> None:
        """Give every peer this process's weights and optimizer state (after a resume)."""
        if self.learners is not None:
            self.learners.sync_from(model, learner)

    @contextmanager
    def bracket(
        self, trajectory: Trajectory, iteration: int, checkpoint: Path | None, run_dir: Path
    ) -> Iterator[None]:
        """Around one update: the peers start on ``trajectory`` and finish after it.

        Raises:
            TrainingStopped: a learner (this one or a peer) failed; the message names the last
                checkpoint and the command that continues the run.
        """
        if self.learners is None:
            yield
            return
        try:
            self.learners.start(trajectory, iteration)
            yield
            self.learners.finish()
        except Exception as e:
            saved = f"last checkpoint: {checkpoint}" if checkpoint else "no checkpoint was saved yet"
            raise TrainingStopped(
                f"a learner failed in iteration {iteration} ({type(e).__name__}: {str(e)[:300]}); "
                f"{saved}; continue with: marft train --resume {run_dir}",
                checkpoint,
                1,
            ) from e

    def close(self) -> None:
        """Stop the peer actors."""
        if self.learners is not None:
            self.learners.shutdown()
