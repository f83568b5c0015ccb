"""Signals that stop a run politely: SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) while it
trains ask for a checkpoint at the end of the iteration, then a stop. A second signal is not
caught, so the user can still stop at once."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

CAUGHT = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """A context in which :data:`CAUGHT` signals are recorded instead of acted on.

    Outside the main thread (where Python cannot install handlers) nothing is caught.

    Attributes:
        received: the first signal that arrived, or None.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in CAUGHT:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)

    @property
    def name(self) -> str:
        """The received signal's name (``SIGINT``), or empty when none arrived."""
        return signal.Signals(self.received).name if self.received is not None else ""
