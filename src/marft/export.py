"""``marft export``: one agent of a trained team, as a PEFT adapter or merged into its base."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from marft.compose import build_base, build_envs, load_config, resolve
from marft.trainer.checkpoint import MANIFEST, CheckpointError, resolve_checkpoint, run_dir_of


def export_agent(run_dir: str | Path, role: str, out: str | Path, merge: bool = False) -> Path:
    """Write agent ``role``'s adapter (or, with ``merge``, base + adapter as one model) to ``out``.

    The adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) loads with
    ``PeftModel.from_pretrained(base, out)``. A merged folder holds the model and its tokenizer
    and loads with ``AutoModelForCausalLM.from_pretrained(out)``; an agent with a trainable output
    head (``lora.modules_to_save``) gets its own head in the merged model. With ``lora.shared``
    every role exports the one shared adapter (its role prompt, in the run's ``config.yaml``, is
    what makes it that agent). In a team of several bases (``models``) the agent merges into its
    own base.

    Args:
        run_dir: a run directory (its newest complete checkpoint is used) or a checkpoint folder.
        role: the agent to export.
        out: output folder; must not exist or be empty.
        merge: merge into the base model instead of copying the adapter.

    Raises:
        CheckpointError: no usable checkpoint, an unknown role, or a non-empty ``out``.
    """
    ckpt = resolve_checkpoint(run_dir)
    run = run_dir_of(ckpt)
    folders = sorted(p.name for p in (ckpt / "adapters").iterdir() if p.is_dir())
    # role -> adapter folder (a shared adapter serves every role); older checkpoints: one per role
    adapter_of = json.loads((ckpt / MANIFEST).read_text()).get("adapter_of") or {f: f for f in folders}
    name = adapter_of.get(role, role)
    if name not in folders:
        raise CheckpointError(f"no agent {role!r} in {ckpt}; agents: {', '.join(sorted(adapter_of))}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} is not empty; give a new --out folder")
    adapter = ckpt / "adapters" / name
    if not merge:
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        return out
    import torch
    from peft import PeftModel

    cfg = load_config(str(run / "config.yaml"))
    spec = cfg.bases()[cfg.base_of()[role]]  # the agent's own base (a team may have several)
    if spec.dtype == "auto":  # merge in float32 on any host: bfloat16 would round the deltas away
        spec = dataclasses.replace(spec, dtype="float32")
    resolved = resolve(cfg)
    (env,) = build_envs(resolved, 1)
    # The built-in tiny base is rebuilt from its own seed, so it comes out identical to training's.
    base, tokenizer, _ = build_base(resolved, env, torch.device("cpu"), spec=spec)
    model = PeftModel.from_pretrained(base, str(adapter), adapter_name=name)
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
