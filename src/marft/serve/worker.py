"""The serving loop: a :class:`~marft.rollout.live.LiveBatcher` stepped on its own thread, so
that requests arriving from any thread (the HTTP server's event loop) join the next generation
call."""

from __future__ import annotations

import logging
import threading
import time

from marft.rollout.live import LiveBatcher

log = logging.getLogger(__name__)


class BatchWorker:
    """Steps a batcher on a daemon thread while it has tasks; sleeps while it has none.

    Args:
        batcher: the live batcher (owned by this worker from now on: only its thread steps it).
        batch_wait_s: after an idle spell, how long the first task waits for others to arrive
            before the first generation call (bounded waiting; later arrivals join at the next
            call without waiting).
    """

    def __init__(self, batcher: LiveBatcher, batch_wait_s: float = 0.005) -> None:
        self.batcher = batcher
        self.batch_wait_s = batch_wait_s
        self._wake = threading.Condition()
        self._stopping = False
        self.failures = 0
        """Generation calls that raised (their tasks were ended with an error)."""
        self._thread = threading.Thread(target=self._loop, name="marft-batch", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A task was submitted (or cancelled): wake the loop."""
        with self._wake:
            self._wake.notify()

    def _loop(self) -> None:
        batcher = self.batcher
        while True:
            with self._wake:
                while not batcher.pending and not self._stopping:
                    self._wake.wait()
                if self._stopping and not batcher.pending:
                    return
            if not batcher.live and self.batch_wait_s > 0:
                time.sleep(self.batch_wait_s)
            try:
                batcher.step()
            except Exception as e:  # a failed generation fails its tasks, not the server
                self.failures += 1
                log.exception("generation failed; its tasks end with an error")
                batcher.fail_all(f"{type(e).__name__}: {e}")

    def close(self, timeout: float | None = None) -> None:
        """Finish the tasks in flight and waiting, then stop the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
