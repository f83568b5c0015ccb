"""Loading the base model and its tokenizer, and choosing device and dtype."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from marft.config import ModelConfig


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer cannot be loaded (message says what to do)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"model.device is {name!r} but CUDA is not available; use model.device=cpu or auto"
        )
    return torch.device(name)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``model.dtype``'s explicit names."""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as torch reports it.

    Asks torch's private probes ``torch.cpu._is_avx512_bf16_supported`` and
    ``torch.cpu._is_amx_tile_supported``; False where this torch has neither (or they fail).
    """
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        supported = getattr(torch.cpu, probe, None)
        try:
            if supported is not None and supported():
                return True
        except Exception:  # a private probe: any failure means "not known to be supported"
            continue
    return False


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether CUDA ``device`` computes bfloat16 natively (compute capability 8.0+: Ampere and
    later; emulated bf16 on older GPUs does not count)."""
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # a torch without ``including_emulation``
            return bool(torch.cuda.is_bf16_supported())


def resolve_dtype(
    name: str, device: torch.device, model_name: str, *, native_bf16: bool | None = None
) -> torch.dtype:
    """The frozen base's dtype for ``model.dtype`` ``name`` on ``device``.

    ``float32``, ``bfloat16`` and ``float16`` are used as given. ``auto`` picks:

    - float32 for the built-in model (``model_name == "tiny"``) on any device: a random base
      built from scratch, whose numbers stay the same across hosts;
    - bfloat16 on a CUDA device with native bf16 (:func:`cuda_has_bf16`: Ampere and later) and
      on a CPU whose torch reports native bf16 (:func:`cpu_has_bf16`: AVX512-BF16 or AMX);
    - float32 everywhere else (older GPUs, CPUs without bf16, MPS).

    Args:
        name: ``model.dtype``: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: where the base runs.
        model_name: ``model.name`` (``tiny``: the built-in model).
        native_bf16: whether ``device`` computes bf16 natively; None asks this machine's hardware
            (``marft plan`` passes True to plan for a GPU it does not run on).
    """
    if name != "auto":
        return DTYPES[name]
    if model_name == "tiny" or device.type not in ("cuda", "cpu"):
        return torch.float32
    if native_bf16 is None:
        native_bf16 = cuda_has_bf16(device) if device.type == "cuda" else cpu_has_bf16()
    return torch.bfloat16 if native_bf16 else torch.float32


def load_base(cfg: ModelConfig, corpus: Sequence[str] = (), dtype: torch.dtype | None = None):
    """Load the base causal LM and its tokenizer (``tiny`` builds the built-in model from ``corpus``).

    Args:
        cfg: the model section of the config.
        corpus: text the built-in tiny tokenizer must cover (ignored for other models).
        dtype: load the weights directly in this dtype (avoids a float32 copy of a large model).

    Returns:
        ``(model, tokenizer)`` with the tokenizer padding on the left and a pad token set.

    Raises:
        ModelLoadError: the model cannot be found (offline or misspelt) or has no chat template.
    """
    if cfg.name == "tiny":
        from marft.models.tiny import build_tiny_model

        model, tokenizer = build_tiny_model(cfg.tiny, corpus)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        offline = cfg.local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1"
        kw = dict(trust_remote_code=cfg.trust_remote_code, local_files_only=offline)
        if cfg.gguf_file:
            kw["gguf_file"] = cfg.gguf_file
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.name, **kw)
            model = AutoModelForCausalLM.from_pretrained(cfg.name, dtype=dtype, **kw)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(
                f"cannot load model {cfg.name!r} ({first}). Give a local folder or a cached Hugging Face "
                "name; offline, download it once elsewhere or use model.name=tiny."
            ) from None
        if tokenizer.chat_template is None:
            raise ModelLoadError(
                f"the tokenizer of {cfg.name!r} has no chat template; use an instruct/chat model "
                "(marft builds every prompt with the tokenizer's chat template)"
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
    return model, tokenizer


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends an action: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(extra)
    return sorted(ids)
