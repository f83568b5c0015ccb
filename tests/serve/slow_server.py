"""A ``marft serve`` of the untrained demo team whose every generation call takes ``--delay``
seconds longer, so that tests can act while a request is in flight (SIGTERM, a client leaving).
Started by the tests as ``python slow_server.py --delay S --port P``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from marft.serve import load_team  # noqa: E402
from marft.serve.app import create_app  # noqa: E402
from marft.serve.openai_api import ServeLimits  # noqa: E402
from tests.serve.conftest import QUICK, Recording  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--delay", type=float, default=0.5)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    team = load_team("demo", base=True, overrides=QUICK)
    Recording(team.backend, delay_s=args.delay)
    app = create_app(team, ServeLimits(max_concurrency=4, max_queue=4))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=60)
