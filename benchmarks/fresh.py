"""Run one benchmark case in a fresh Python process (so that its peak memory is its own) and read
the JSON row it prints last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_fresh(script: str, *args: str) -> dict:
    """``python script *args`` in a new process; exits with its stderr's tail if it fails."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_results(out: Path | None, rows) -> None:
    """Write a benchmark's rows as JSON to ``out`` (its folder created), if given."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
