"""A decode path with little work per step for the HF backend (``sampling.decode: fast``).

PEFT applies an agent's LoRA through a chain of module calls per projection, and a mixed-adapter
batch (one adapter per row) loops over the batch's adapters in every projection, building each
adapter's row list in Python at every step. transformers' default KV cache concatenates every
layer's keys and values with the new token's at every step, copying the whole cache. The fast
path replaces both for the length of one ``generate``:

* :func:`gathered_lora`: every LoRA projection computes ``base(x) + s_a * B_a A_a x`` with the
  row's adapter ``a`` gathered once per call: one ``bmm`` pair per projection for a mixed batch
  (``A[row_adapter]``: ``[S, r, in]``), two plain matmuls for a batch of one adapter, and zeros for
  rows on the bare base. A per-agent copy of a whole module (``lora.modules_to_save``) runs once
  per adapter on its rows, with the row indices built once per call.
* :func:`growing_cache`: a KV cache whose layers are preallocated for the prompt and every new
  token, written in place; attention reads a view of the filled part, so it attends to exactly
  what the concatenating cache holds.

The arithmetic is the eager path's: the same matmuls in the same order for one adapter (the
same sampled tokens, bit for bit), and for a mixed batch a batched matmul per row instead of one
matmul per adapter's rows (its rounding may differ in the last bits of float32; the test bounds
the log-prob difference). LoRA variants (DoRA, ...), LoRA with a bias, a model in training mode
(dropout) or layers other than ``nn.Linear`` keep the eager path: :func:`fast_decode_unsupported` says why.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

BASE = "__base__"
"""Adapter name of a row that runs on the bare base model (PEFT's convention)."""


def fast_decode_unsupported(policy: nn.Module) -> str | None:
    """Why the fast path cannot serve this PEFT model (None: it can).

    It serves plain LoRA on ``nn.Linear`` projections (no variant such as DoRA, no LoRA bias) and
    ``modules_to_save`` copies, in eval mode (LoRA dropout off): the backend samples a model in
    training mode with the eager path.
    """
    for name, module in policy.named_modules():
        if isinstance(module, LoraLinear):
            if not isinstance(module.base_layer, nn.Linear):
                return f"{name}: LoRA on {type(module.base_layer).__name__}, not nn.Linear"
            if module.lora_variant:
                return f"{name}: a LoRA variant ({', '.join(sorted(module.lora_variant))})"
            if any(b.bias is not None for b in module.lora_B.values()):
                return f"{name}: LoRA with a bias"
        elif isinstance(module, LoraLayer):  # LoRA on embeddings, convolutions, quantized layers
            return f"{name}: LoRA on {type(module).__name__}"
    return None


@dataclass(frozen=True)
class RowAdapters:
    """Which adapter each row of a batch runs.

    Attributes:
        names: the distinct adapters of the batch (``BASE`` included when a row has none).
        index: ``[S]`` int64 position of each row's adapter in ``names``.
        rows: per distinct adapter, ``[n_a]`` int64 indices of its rows.
    """

    names: tuple[str, ...]
    index: Tensor
    rows: tuple[Tensor, ...]

    @classmethod
    def of(cls, adapters: Sequence[str], device: torch.device) -> RowAdapters:
        """The rows' adapters (``adapters[s]`` for row ``s``), looked up once per call."""
        names = tuple(dict.fromkeys(adapters))
        position = {name: i for i, name in enumerate(names)}
        index = torch.tensor([position[a] for a in adapters], dtype=torch.long, device=device)
        rows = tuple((index == i).nonzero().squeeze(-1) for i in range(len(names)))
        return cls(names, index, rows)


def _lora_forward(module: LoraLinear, lora: _GatheredLora, x: Tensor, *args, **kwargs) -> Tensor:
    """``base(x) + s_a B_a A_a x`` per row (the replacement of a LoRA projection's forward).

    Args:
        module: the PEFT LoRA projection.
        lora: its adapters gathered for this batch's rows.
        x: ``[S, T, in]`` inputs.

    Returns:
        ``[S, T, out]`` in the base's dtype.
    """
    base = module.base_layer
    result = F.linear(x, base.weight, base.bias)
    if lora.a is None:
        return result
    h = x.to(lora.a.dtype)
    if lora.a.dim() == 2:  # one adapter for every row: as PEFT computes it
        delta = F.linear(F.linear(h, lora.a), lora.b) * lora.scaling
    else:  # [S, r, in] and [S, out, r]: one batched matmul per factor, scaled per row ([S, 1, 1])
        delta = torch.bmm(torch.bmm(h, lora.a.transpose(1, 2)), lora.b.transpose(1, 2)) * lora.scaling
    return (result + delta).to(result.dtype)


@dataclass(frozen=True)
class _GatheredLora:
    """One projection's LoRA factors for a batch.

    Attributes:
        a: ``[r, in]`` (one adapter), ``[S, r, in]`` per row, or None (every row on the base).
        b: ``[out, r]`` or ``[S, out, r]``.
        scaling: the adapter's ``alpha / r``, or per row ``[S, 1, 1]`` (0 on the base's rows).
    """

    a: Tensor | None
    b: Tensor | None
    scaling: float | Tensor


def _gather(module: LoraLinear, rows: RowAdapters) -> _GatheredLora:
    """The factors of ``module`` for the batch's rows (once per ``generate``)."""
    trained = [n for n in rows.names if n != BASE and n in module.lora_A]
    if not trained:
        return _GatheredLora(None, None, 0.0)
    if len(rows.names) == 1:
        name = rows.names[0]
        return _GatheredLora(module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name])
    a_ref = module.lora_A[trained[0]].weight
    b_ref = module.lora_B[trained[0]].weight
    a_all, b_all, scales = [], [], []
    for name in rows.names:
        if name in trained:
            a_all.append(module.lora_A[name].weight)
            b_all.append(module.lora_B[name].weight)
            scales.append(float(module.scaling[name]))
        else:  # the bare base: a zero update
            a_all.append(torch.zeros_like(a_ref))
            b_all.append(torch.zeros_like(b_ref))
            scales.append(0.0)
    index = rows.index
    scaling = torch.tensor(scales, dtype=a_ref.dtype, device=a_ref.device)[index].view(-1, 1, 1)
    return _GatheredLora(torch.stack(a_all)[index], torch.stack(b_all)[index], scaling)


def _saved_forward(wrapper: ModulesToSaveWrapper, rows: RowAdapters, x: Tensor, *args, **kwargs) -> Tensor:
    """A ``modules_to_save`` module with each row's adapter copy (the original module for the base)."""
    copies = wrapper.modules_to_save

    def module_of(name: str) -> nn.Module:
        if name not in copies:  # the base's rows (an nn.ModuleDict has no .get)
            return wrapper.original_module
        return copies[name]

    if len(rows.names) == 1:
        return module_of(rows.names[0])(x, *args, **kwargs)
    parts = [
        module_of(name)(x[idx], *args, **kwargs) for name, idx in zip(rows.names, rows.rows, strict=True)
    ]
    out = parts[0].new_empty((x.shape[0], *parts[0].shape[1:]))
    for idx, part in zip(rows.rows, parts, strict=True):
        out[idx] = part
    return out


@contextmanager
def gathered_lora(policy: nn.Module, adapters: Sequence[str], device: torch.device) -> Iterator[None]:
    """Within the block, every LoRA projection and ``modules_to_save`` copy of ``policy`` runs row
    ``s`` with adapter ``adapters[s]`` (``BASE``: none), whatever adapter PEFT has active.

    Call the model without ``adapter_names``; the factors are gathered once, on entry, so the
    adapters must not change inside the block (no training step).
    """
    rows = RowAdapters.of(adapters, device)
    patched: list[nn.Module] = []
    try:
        for module in policy.modules():
            if isinstance(module, LoraLinear):
                module.forward = partial(_lora_forward, module, _gather(module, rows))
            elif isinstance(module, ModulesToSaveWrapper):
                module.forward = partial(_saved_forward, module, rows)
            else:
                continue
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward  # the class's forward again


class _GrowingLayer(DynamicLayer):
    """A layer's keys and values in buffers sized for the whole generation, filled in place.

    Args:
        capacity: positions to hold (prompt plus every new token).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        """Allocate ``[S, H, capacity, D]`` buffers shaped like the first keys and values."""
        self.dtype, self.device = key_states.dtype, key_states.device
        shape_k = (*key_states.shape[:2], self.capacity, key_states.shape[-1])
        shape_v = (*value_states.shape[:2], self.capacity, value_states.shape[-1])
        self._keys = key_states.new_empty(shape_k)
        self._values = value_states.new_empty(shape_v)
        self.keys = self._keys[:, :, :0]
        self.values = self._values[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Write the new positions after the filled ones; the filled part's views."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache of {self.capacity} positions asked to hold {end}")
        self._keys[:, :, self.length : end].copy_(key_states)
        self._values[:, :, self.length : end].copy_(value_states)
        self.length = end
        self.keys = self._keys[:, :, :end]
        self.values = self._values[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Positions filled so far."""
        return self.length

    def reset(self) -> None:
        """Forget the filled positions (the buffers stay)."""
        self.length = 0
        if self.is_initialized:
            self.keys = self._keys[:, :, :0]
            self.values = self._values[:, :, :0]


def growing_cache(capacity: int) -> DynamicCache:
    """A KV cache for one generation of at most ``capacity`` positions (prompt and new tokens)
    whose layers are allocated once and filled in place (see :class:`_GrowingLayer`)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = partial(_GrowingLayer, capacity)
    return cache
