"""Checkpoints: one PEFT adapter folder per agent, the value head and the optimizer states.

Layout of ``checkpoint/``::

    adapters/<role>/adapter_config.json, adapter_model.safetensors   # PeftModel.from_pretrained loads each
    value_head.pt
    optimizers.pt
    trainer_state.json

The folder is written under a temporary name and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from marft.models.team_model import TeamModel


def save_checkpoint(path: Path, model: TeamModel, algorithm: Any, state: dict[str, Any]) -> Path:
    """Write a checkpoint folder at ``path`` atomically (temp folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    adapters = tmp / "adapters"
    for role in model.roles:
        model.policy.save_pretrained(str(adapters / role), selected_adapters=[role])
        nested = adapters / role / role  # PEFT nests non-"default" adapters in a subfolder
        if nested.is_dir():
            for item in nested.iterdir():
                item.rename(adapters / role / item.name)
            nested.rmdir()
    if model.value_head is not None:
        torch.save(model.value_head.state_dict(), tmp / "value_head.pt")
    if hasattr(algorithm, "state_dict"):
        torch.save(algorithm.state_dict(), tmp / "optimizers.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path
