"""Run one benchmark case in a fresh Python process (so that its peak memory is its own) and read
the JSON row it prints last."""

from __future__ import annotations

import json
import subprocess
import sys


def run_fresh(script: str, *args: str) -> dict:
    """``python script *args`` in a new process; exits with its stderr's tail if it fails."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
