"""Fixtures of marft run / serve: a trained demo run, a team with a recording backend, and a
server in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from marft.serve import load_team
from marft.trainer.trainer import Trainer
from tests.conftest import small_config

HERE = Path(__file__).resolve().parent
QUICK = ["run.progress=false", "run.loggers=[]"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A demo run trained for 2 iterations (its checkpoint holds both agents' adapters)."""
    out = tmp_path_factory.mktemp("demo-run")
    trainer = Trainer(small_config(), out)
    trainer.setup()
    trainer.train()
    return out


class Recording:
    """Wraps a backend's ``generate``: each call's adapters and limits."""

    def __init__(self, backend, delay_s: float = 0.0) -> None:
        self.backend = backend
        self.calls: list[tuple[list[str], list[int]]] = []
        self.delay_s = delay_s
        self._generate = backend.generate
        backend.generate = self

    def __call__(self, prompts, adapters, limits=None, keys=None):
        self.calls.append((list(adapters), [int(x) for x in limits.tolist()]))
        time.sleep(self.delay_s)
        return self._generate(prompts, adapters, limits, keys)


@pytest.fixture
def demo_team():
    """The untrained demo team, its backend recorded."""
    team = load_team("demo", base=True, overrides=QUICK)
    return team, Recording(team.backend)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on ``url``; stopped (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*args, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start in 120 s")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def serve(request):
    """``serve(*args)`` starts ``marft serve ARGS`` (or a helper script's server)."""
    servers: list[Server] = []

    def start(*args: str, script: str | None = None, env: dict[str, str] | None = None) -> Server:
        head = (
            [sys.executable, str(HERE / script)] if script else [sys.executable, "-m", "marft.cli", "serve"]
        )
        servers.append(Server([*head, *args], env))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()
