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

The arithmetic is the eager path's: the same matmuls in the same order for one adapter (the
same sampled tokens, bit for bit), and for a mixed batch the concatenated rank instead of one
matmul per adapter's rows (its rounding may differ in the last bits of float32; the test bounds
the log-prob difference). LoRA variants (DoRA, ...), LoRA with a bias, a model in training mode
(dropout) or layers other than ``nn.Linear`` keep the eager path
(:func:`~marft.models.row_adapters.gathered_lora_unsupported` says why).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


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
