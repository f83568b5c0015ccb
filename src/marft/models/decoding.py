"""A decode path with little work per step for the HF backend (``sampling.decode: fast``).

PEFT applies an agent's LoRA through a chain of module calls per projection, and a mixed-adapter
batch (one adapter per row) loops over the batch's adapters in every projection, building each
adapter's row list in Python at every step. transformers' default KV cache concatenates every
layer's keys and values with the new token's at every step, copying the whole cache. The fast
path replaces both for the length of one ``generate``:

* :func:`marft.models.row_adapters.gathered_lora`: every LoRA projection computes
  ``base(x) + s_a * B_a A_a x`` with the row's adapter ``a`` chosen once per call: two matmuls
  through every adapter's factors concatenated along the rank (a per-row mask zeroing the other
  adapters' blocks) for a mixed batch, two plain matmuls for a batch of one adapter, and zeros
  for rows on the bare base; a per-agent copy of a whole module (``lora.modules_to_save``) runs
  once per adapter on its rows.
* :func:`growing_cache`: a KV cache whose layers are preallocated for the prompt and every new
  token, written in place; attention reads a view of the filled part, so it attends to exactly
  what the concatenating cache holds.
* :func:`threaded_linears` (CPU, float32): a projection applied to a few rows at a time (every
  decode step) runs as one batched matmul over slices of its output features, one slice per
  thread. MKL computes a float32 matmul of a handful of rows on one thread, reading the weights
  at about a quarter of the machine's bandwidth; the sliced ``bmm`` is spread over the threads
  and gives each output element the same dot product (the same kernel over the same inputs):
  the result is bit for bit the plain one. bfloat16 matmuls already use every thread (oneDNN),
  and CUDA needs none of this, so both are left as they are.
* :func:`float32_decode_attention` (CPU, bfloat16 or float16 bases): torch's CPU attention
  kernel in half precision is several times slower than in float32 for one query token against a
  long cache (466 against 54 microseconds for SmolLM2's shape, 4 rows, 314 keys), so a decode
  step's attention runs in float32 on the half-precision queries, keys and values and is rounded
  back (as accurate as the half-precision kernel, which accumulates in float32 too).

The arithmetic is the eager path's: the same matmuls in the same order for one adapter (the
same sampled tokens, bit for bit), and for a mixed batch the concatenated rank instead of one
matmul per adapter's rows (its rounding may differ in the last bits of float32; the test bounds
the log-prob difference). LoRA variants (DoRA, ...), LoRA with a bias, a model in training mode
(dropout) or layers other than ``nn.Linear`` keep the eager path
(:func:`~marft.models.row_adapters.gathered_lora_unsupported` says why).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface, DynamicCache, PreTrainedConfig
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


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


SPLIT_MAX_ROWS = 64
"""Inputs of at most this many rows (tokens) take the sliced matmul; a prefill of many rows is
already spread over the threads by MKL."""

SPLIT_MIN_WEIGHT = 1 << 18
"""Weights of fewer elements (1 MiB of float32) stay plain: their matmul is too short to share."""


def _split_linear(module: nn.Linear, weight: Tensor, x: Tensor) -> Tensor:
    """``module(x)`` with the matmul of a few rows spread over threads.

    Args:
        module: the projection (its bias is used as it is).
        weight: ``[T, in, out / T]``, the module's weight viewed as ``T`` slices of its output
            features (no copy).
        x: ``[..., in]`` inputs.

    Returns:
        ``[..., out]``, equal to ``F.linear(x, module.weight, module.bias)``.
    """
    features = x.shape[-1]
    # A strided input (the prompt's last position) keeps the plain matmul: MKL computes it with
    # another kernel than a contiguous one, so slicing it would change its last bits.
    if x.numel() > SPLIT_MAX_ROWS * features or not x.is_contiguous():
        return F.linear(x, module.weight, module.bias)
    rows = x.view(-1, features)
    threads = weight.shape[0]
    batch = rows.expand(threads, *rows.shape)
    if module.bias is None:
        sliced = torch.bmm(batch, weight)  # [T, M, out / T]
    else:  # the bias added inside the matmul, as F.linear adds it
        sliced = torch.baddbmm(module.bias.view(threads, 1, -1), batch, weight)
    return sliced.transpose(0, 1).reshape(*x.shape[:-1], -1)


def _splittable(module: nn.Module, threads: int) -> bool:
    """Whether ``module`` is a CPU float32 projection big enough to slice into ``threads`` parts."""
    if type(module) is not nn.Linear:
        return False
    weight = module.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.numel() >= SPLIT_MIN_WEIGHT
        and weight.shape[0] % threads == 0
    )


@contextmanager
def threaded_linears(model: nn.Module, threads: int | None = None) -> Iterator[int]:
    """Within the block, every large CPU float32 ``nn.Linear`` of ``model`` computes inputs of a
    few rows as one ``bmm`` over ``threads`` slices of its output features (default: torch's
    intra-op threads). Inference only: the slices are views of the weights taken on entry, so the
    weights must not change inside the block. Yields how many projections were sliced (0 with one
    thread, on CUDA or in bfloat16)."""
    threads = torch.get_num_threads() if threads is None else threads
    patched: list[nn.Module] = []
    try:
        if threads > 1:
            for module in model.modules():
                if _splittable(module, threads):
                    out, features = module.weight.shape
                    sliced = module.weight.view(threads, out // threads, features).transpose(1, 2)
                    module.forward = partial(_split_linear, module, sliced)
                    patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward  # the class's forward again


DECODE_ATTENTION = "marft_decode_sdpa"
"""The attention implementation of :func:`float32_decode_attention` (transformers' ``sdpa`` for
everything but a half-precision decode step on CPU); its masks are ``sdpa``'s."""


def _decode_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs
) -> tuple[Tensor, None]:
    """transformers' ``sdpa`` attention, in float32 for one half-precision CPU query token.

    Args:
        module: the attention layer.
        query: ``[B, H, Q, D]``.
        key, value: ``[B, H_kv, L, D]``.
        attention_mask: ``sdpa``'s mask (boolean, or additive in the queries' dtype), or None.

    Returns:
        ``([B, Q, H, D] in the queries' dtype, None)``, as ``sdpa_attention_forward``.
    """
    dtype = query.dtype
    if query.shape[2] != 1 or query.device.type != "cpu" or dtype == torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(
        module, query.float(), key.float(), value.float(), attention_mask, **kwargs
    )
    return out.to(dtype), weights


AttentionInterface.register(DECODE_ATTENTION, _decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


@contextmanager
def float32_decode_attention(model: nn.Module) -> Iterator[int]:
    """Within the block, every layer of ``model`` that attends with transformers' ``sdpa`` computes
    a half-precision decode step on CPU in float32 (:func:`_decode_attention`). The model's
    configs name the implementation, so only this model is affected. Yields how many configs were
    switched (0 for a float32 model, one on CUDA, or one with another attention)."""
    switched: list[PreTrainedConfig] = []
    weight = next(model.parameters())
    try:
        if weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16):
            for module in model.modules():
                config = getattr(module, "config", None)  # transformers' layers keep their config
                # A config shared by many layers is switched once: it no longer reads "sdpa".
                if isinstance(config, PreTrainedConfig) and config._attn_implementation == "sdpa":
                    config._attn_implementation = DECODE_ATTENTION
                    switched.append(config)
        yield len(switched)
    finally:
        for config in switched:
            config._attn_implementation = "sdpa"
