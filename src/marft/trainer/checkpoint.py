"""Checkpoints that never lose work: complete, atomic, verified, the last K kept.

A run directory holds ``checkpoints/iter-NNNNNN/`` folders, ``NNNNNN`` being the number of
iterations done. Each holds::

    manifest.json                  # format, iteration, env steps, roles, trackers' run ids,
                                   # every file and its size
    adapters/<role>/adapter_config.json, adapter_model.safetensors   # PeftModel.from_pretrained loads each
    value_head.pt                  # when the algorithm has a critic
    optimizers.pt                  # every optimizer's state
    trainer_state.pt               # RNG states (python, numpy, torch, CUDA), collector and env state

A checkpoint is written into a hidden temporary folder, every file and the folder are fsynced, and
the folder is renamed into place (an atomic step on POSIX file systems); the manifest is written
last. Old checkpoints are renamed away before they are deleted. So a ``kill -9`` at any moment
leaves, at worst, a hidden leftover folder that readers ignore and the next save removes, and
:func:`latest_checkpoint` only returns folders whose manifest lists files that are all there with
their recorded sizes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from marft.models.team_model import TeamModel

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^iter-(\d{6,})$")


class CheckpointError(RuntimeError):
    """A checkpoint or run directory that cannot be used; the message says what to do."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_adapters(folder: Path, model: TeamModel) -> None:
    for name in model.adapters:
        model.of(name).policy.save_pretrained(str(folder / name), selected_adapters=[name])
        nested = folder / name / name  # PEFT nests non-"default" adapters in a subfolder
        if nested.is_dir():
            for item in nested.iterdir():
                item.rename(folder / name / item.name)
            nested.rmdir()


def save_checkpoint(
    run_dir: str | Path,
    model: TeamModel,
    optimizers: dict[str, Any],
    trainer_state: dict[str, Any],
    iteration: int,
    env_steps: int,
    keep: int = 3,
    loggers: dict[str, str] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/iter-{iteration:06d}`` atomically and keep the newest ``keep``.

    Args:
        run_dir: the run directory.
        model: the team model (adapters and value head are saved).
        optimizers: the algorithm's optimizer states (``PolicyGradient.state_dict()``).
        trainer_state: RNG, collector and env states; anything ``torch.save`` can pickle.
        iteration: iterations done (the next run resumes at this iteration index).
        env_steps: team steps taken so far.
        keep: how many checkpoints to keep (older ones are removed); 0 keeps all.
        loggers: each tracker's run id (``run.loggers``), so that a resume continues those runs.

    Returns:
        The checkpoint folder.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = root / f"iter-{iteration:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    _write_adapters(tmp / "adapters", model)
    if model.value_head is not None:
        torch.save(model.value_head.state_dict(), tmp / "value_head.pt")
    torch.save(optimizers, tmp / "optimizers.pt")
    torch.save(trainer_state, tmp / "trainer_state.pt")
    manifest = {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "env_steps": env_steps,
        "roles": list(model.roles),
        "adapter_of": dict(model.adapter_of),  # role -> its folder under adapters/
        "value_head": model.value_head is not None,
        "loggers": dict(loggers or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_manifest(tmp, manifest)
    for d in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: len(p.parts), reverse=True):
        _fsync(d)
    if final.exists():  # the same iteration saved again (e.g. a signal right after a periodic save)
        _discard(final)
    tmp.rename(final)
    _fsync(root)
    if keep > 0:
        for old in list_checkpoints(run_dir, verify=False)[:-keep]:
            _discard(old)
    return final


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Fsync every file of ``folder`` and write the manifest listing them with their sizes, last."""
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync(f)
        files[f.relative_to(folder).as_posix()] = f.stat().st_size
    (folder / MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=2))
    _fsync(folder / MANIFEST)


def _discard(path: Path) -> None:
    """Rename away first (atomic), then delete: a kill midway never leaves a half-deleted
    ``iter-*`` folder that looks like a checkpoint."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    for p in root.glob(".*"):
        if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".trash-")):
            shutil.rmtree(p, ignore_errors=True)


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint folder.

    Raises:
        CheckpointError: no manifest, an unknown format, or a listed file missing or of the wrong size.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a complete checkpoint (no readable {MANIFEST}: {e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {manifest.get('format_version')!r}; this marft reads "
            f"{FORMAT_VERSION}"
        )
    for name, size in manifest["files"].items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            raise CheckpointError(f"{path} is damaged: {name} is missing or has the wrong size")
    return manifest


def list_checkpoints(run_dir: str | Path, verify: bool = True) -> list[Path]:
    """The run's checkpoint folders, oldest first (only complete ones when ``verify``)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir())
    out = []
    for _, p in found:
        if verify:
            try:
                verify_checkpoint(p)
            except CheckpointError:
                continue
        out.append(p)
    return out


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a checkpoint folder (two levels up), or ``path`` itself otherwise."""
    path = Path(path)
    return path.parent.parent if (path / MANIFEST).exists() else path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run directory (its newest complete checkpoint), its
    ``checkpoints/`` folder, or a checkpoint folder itself.

    Raises:
        CheckpointError: nothing usable there; the message says what was looked for.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a run directory (the --out of marft train)")
    if (path / MANIFEST).exists():
        verify_checkpoint(path)
        return path
    run_dir = path.parent if path.name == CHECKPOINTS else path
    latest = latest_checkpoint(run_dir)
    if latest is None:
        if not (run_dir / "config.yaml").exists():
            raise CheckpointError(
                f"{path} is not a marft run directory (no config.yaml); give the --out folder of a marft "
                "train run"
            )
        raise CheckpointError(
            f"{run_dir} has no complete checkpoint under {CHECKPOINTS}/; "
            f"the run stopped before its first save: start it again with marft train CONFIG --out {run_dir}"
        )
    return latest


def load_adapter_weights(model: TeamModel, checkpoint: Path) -> None:
    """Load every adapter of ``model`` (one per agent, or the shared one) from a checkpoint folder.

    Raises:
        CheckpointError: an adapter is missing or does not fit the model.
    """
    from safetensors.torch import load_file

    for name in model.adapters:
        weights = checkpoint / "adapters" / name / "adapter_model.safetensors"
        if not weights.exists():
            found = sorted(p.name for p in (checkpoint / "adapters").glob("*") if p.is_dir())
            raise CheckpointError(
                f"{checkpoint} has no adapter {name!r} (it holds {', '.join(found) or 'none'}); the team "
                "in the config differs from the run's (its agents, or lora.shared)"
            )
        try:
            model.set_adapter_weights({name: load_file(str(weights))})
        except ValueError as e:
            raise CheckpointError(f"{checkpoint}: {e}") from None


def load_trainer_files(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """``(optimizer states, trainer state, value head state or None)`` of a checkpoint folder."""
    # Our own files, written by save_checkpoint: they hold RNG and env state objects, not only tensors.
    optim = torch.load(checkpoint / "optimizers.pt", map_location="cpu", weights_only=False)
    state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
    vh = checkpoint / "value_head.pt"
    value_head = torch.load(vh, map_location="cpu") if vh.exists() else None
    return optim, state, value_head
