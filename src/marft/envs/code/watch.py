"""The trainer's side of one sandboxed run: feed the job, read the checker's reports and the
output, kill at the limits, and turn what was reported into one verdict.

The checker reports on a socket whose other end only it holds (a socket, not a pipe: a process of
the same user can reopen another's pipe through ``/proc/PID/fd``, never a socket). The program's
process has no end of it, so nothing the program writes anywhere can become a report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
KILL_GRACE_S = 5.0
"""How long to wait for a killed sandbox to be reaped before giving up on it."""
POLL_S = 0.5
"""How often a waiting sandbox is checked for having exited."""
DRAIN_S = 0.5
"""How long pipes are read after the sandbox exited (a child it left may hold them open)."""
REPORT_BYTES = 4 * 2**20
"""Reports kept; the checker writes a few lines per test."""


def frames(*messages: dict) -> bytes:
    """``messages`` as the checker reads them: 4 bytes of length, then JSON, each."""
    out = b""
    for message in messages:
        data = json.dumps(message).encode()
        out += struct.pack(">I", len(data)) + data
    return out


@dataclass
class Watch:
    """Feeds a sandbox its job and reads its reports and output until it ends or must be killed.

    Attributes:
        proc: the sandbox (its process group holds everything it started).
        channel: the trainer's end of the socket to the checker.
        payload: the job's frames.
        output_bytes: kill once stdout and stderr together pass this many bytes.
        kept_bytes: bytes of stdout and of stderr kept.
    """

    proc: subprocess.Popen
    channel: socket.socket
    payload: bytes
    output_bytes: int
    kept_bytes: int
    out: dict[str, bytearray] = field(
        default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray(), "reports": bytearray()}
    )
    printed: int = 0
    sent: int = 0
    killed_for: str = ""

    def wait(self, deadline: float) -> None:
        sel = selectors.DefaultSelector()
        proc = self.proc
        self.channel.setblocking(False)
        sel.register(self.channel, selectors.EVENT_READ | selectors.EVENT_WRITE, "reports")
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        try:
            while sel.get_map() and not self.killed_for:
                if proc.poll() is not None:
                    # Exited: a child it left behind (without a pid namespace) may hold the
                    # pipes open; read what is there, then stop waiting for them.
                    deadline = min(deadline, time.perf_counter() + DRAIN_S)
                    if time.perf_counter() >= deadline:
                        break
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.killed_for = "timeout"
                    break
                for key, events in sel.select(timeout=min(left, POLL_S)):
                    if events & selectors.EVENT_WRITE:
                        self._feed(sel)
                    if events & selectors.EVENT_READ:
                        self._read(sel, key)
            if not self.killed_for:  # its pipes are closed, but it may still run
                try:
                    proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
                except subprocess.TimeoutExpired:
                    self.killed_for = "timeout"
        finally:
            sel.close()
            self._finish()

    def _feed(self, sel: selectors.BaseSelector) -> None:
        try:
            self.sent += self.channel.send(self.payload[self.sent : self.sent + 65536])
        except BlockingIOError:
            return
        except OSError:  # the sandbox died before reading its job
            self.sent = len(self.payload)
        if self.sent >= len(self.payload):
            sel.modify(self.channel, selectors.EVENT_READ, "reports")

    def _read(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        try:
            chunk = os.read(key.fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # a reset socket: the checker is gone
            chunk = b""
        if not chunk:
            sel.unregister(key.fileobj)
            return
        self._keep(key.data, chunk)
        if self.printed > self.output_bytes:
            self.killed_for = "output"

    def _keep(self, name: str, chunk: bytes) -> None:
        if name == "reports":
            if len(self.out["reports"]) < REPORT_BYTES:
                self.out["reports"] += chunk
            return
        self.printed += len(chunk)
        room = self.kept_bytes - len(self.out[name])
        if room > 0:
            self.out[name] += chunk[:room]

    def _finish(self) -> None:
        proc = self.proc
        # Always: without a pid namespace, children it left behind live in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap dies, and its pid namespace with it
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("sandbox process %d did not exit after SIGKILL", proc.pid)
        for f in (proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()
        self.channel.close()

    def reports(self) -> list[list]:
        """The checker's reports, in order (a line cut off by a kill is dropped)."""
        out = []
        for line in self.out["reports"].decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, list) and event and isinstance(event[0], str):
                    out.append(event)
        return out
