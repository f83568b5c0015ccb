"""Seeding and RNG state (what a checkpoint saves so that a resumed run continues exactly), and
new run folders."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and (if present) CUDA RNG states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def default_run_dir(root: str | Path = "runs") -> Path:
    """A new folder ``runs/YYYYmmdd-HHMMSS[-k]``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, k = Path(root) / stamp, 1
    while path.exists():
        path, k = Path(root) / f"{stamp}-{k}", k + 1
    return path
