"""The run's counters, and the token budget that can end a run early.

:class:`RunState` is what a checkpoint keeps of the loop itself (weights, optimizers, RNG and the
sampler's env state are saved beside it), written by :meth:`RunState.state_dict` and read back by
:meth:`RunState.from_state_dict`, the one pair that saves and restores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    """Where a run stands after its last complete iteration.

    Attributes:
        iteration: iterations done.
        version: adapter updates so far (the version a generation backend samples with).
        env_steps: team steps taken in the env copies so far.
        generated_tokens: every agent's sampled training tokens so far (``run.token_budget``).
        elapsed_s: training seconds so far, over every session of the run.
        nonfinite_in_row: per adapter, how many iterations in a row skipped its update because
            its loss or gradient was not finite (``run.max_nonfinite_in_row``).
    """

    iteration: int = 0
    version: int = 0
    env_steps: int = 0
    generated_tokens: int = 0
    elapsed_s: float = 0.0
    nonfinite_in_row: dict[str, int] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (:meth:`from_state_dict` reads it back)."""
        return {
            "iteration": self.iteration,
            "version": self.version,
            "env_steps": self.env_steps,
            "generated_tokens": self.generated_tokens,
            "elapsed_s": self.elapsed_s,
            "nonfinite_in_row": dict(self.nonfinite_in_row),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RunState:
        """The state a checkpoint saved. Checkpoints from before versions and token budgets
        were saved have no ``version`` (one update per iteration: the iteration) and no
        ``generated_tokens`` (0)."""
        return cls(
            iteration=state["iteration"],
            version=state.get("version", state["iteration"]),
            env_steps=state["env_steps"],
            generated_tokens=state.get("generated_tokens", 0),
            elapsed_s=state["elapsed_s"],
            nonfinite_in_row=dict(state["nonfinite_in_row"]),
        )


@dataclass(frozen=True)
class TokenBudget:
    """``run.token_budget``: the run ends once the team has generated this many training tokens
    (None: no budget; the run goes on for ``run.iterations``)."""

    limit: int | None

    def spent(self, state: RunState) -> bool:
        """Whether the run has generated its budget."""
        return self.limit is not None and state.generated_tokens >= self.limit

    def progress(self, state: RunState) -> dict[str, str]:
        """The progress bar's budget field (none without a budget)."""
        return {"tokens": f"{state.generated_tokens}/{self.limit}"} if self.limit is not None else {}
