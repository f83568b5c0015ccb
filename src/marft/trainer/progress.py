"""The progress bar of ``marft train``: iterations done, the last mean return, which adapters
trained, and the token budget when there is one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tqdm.auto import tqdm


class Progress:
    """A tqdm bar over the iterations a session runs (hidden with ``run.progress: false``).

    Args:
        start: iterations already done (a resumed run starts there).
        total: ``run.iterations``.
        enabled: ``run.progress``.
    """

    def __init__(self, start: int, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = tqdm(
            range(start, total),
            initial=start,
            total=total,
            desc="marft train",
            disable=not enabled,
            dynamic_ncols=True,
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self._bar)

    def note(self, message: str) -> None:
        """A line above the bar, shown only with progress on."""
        if self.enabled:
            self._bar.write(f"marft: {message}")

    def say(self, message: str) -> None:
        """A line above the bar (or on its own), shown whatever ``run.progress`` says."""
        self._bar.write(f"marft: {message}")

    def show(self, row: Mapping[str, Any], trained: list[str], budget: Mapping[str, str]) -> None:
        """The bar's fields after an iteration: its mean return, the adapters it trained, the budget."""
        self._bar.set_postfix(ret=f"{row['episode_return']:.3f}", trained=",".join(trained) or "-", **budget)

    def close(self) -> None:
        self._bar.close()
