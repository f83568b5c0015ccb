"""Mixed-adapter batches by gathered LoRA: row ``s`` of one forward runs adapter ``adapters[s]``.

PEFT applies an agent's LoRA through a chain of module calls per projection, and its
mixed-adapter batch (``adapter_names``, inference only) loops over the batch's adapters in every
projection, building each adapter's row list in Python at every call. Here, for the length of a
block (:func:`gathered_lora`), every LoRA projection computes ``base(x) + s_a B_a A_a x`` with the
row's adapter ``a`` chosen once, on entry:

* a mixed batch: two plain matmuls through every adapter's factors concatenated along the rank
  (``[n_adapters * r, in]``), the blocks of the rank that belong to other adapters masked to zero
  per row (and all of them for a row on the bare base);
* a batch of one adapter: two plain matmuls through its own factors, as PEFT computes them.

A per-agent copy of a whole module (``lora.modules_to_save``) runs once per adapter on its rows,
with the row indices built once.

Two paths use it:

* the HF backend's fast decode (:mod:`marft.models.decoding`), under ``torch.no_grad``: the
  factors are gathered once per ``generate``;
* the learner's mixed-adapter step (:meth:`marft.models.team_model.TeamModel.mixed`): every
  training agent's rows in one forward and one backward; the concatenation is in the autograd
  graph and the masks are exact zeros, so each adapter's factors receive the gradient of its own
  rows only.

For one adapter the arithmetic is PEFT's (the same matmuls in the same order). For a mixed batch
the masked sum over the concatenated rank (zeros added for the other adapters' blocks, the scaling
applied before the up-projection) may differ from one matmul per adapter's rows in the last bits
of float32. The rank is ``n_adapters`` times wider: a few percent of a projection's work when
``r`` is much smaller than its width. :func:`gathered_lora_unsupported` says which models it
cannot serve (LoRA variants such as DoRA, LoRA with a bias, LoRA on layers other than
``nn.Linear``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from torch import Tensor, nn

BASE = "__base__"
"""Adapter name of a row that runs on the bare base model (PEFT's convention)."""


def gathered_lora_unsupported(policy: nn.Module) -> str | None:
    """Why :func:`gathered_lora` cannot serve this PEFT model (None: it can).

    It serves plain LoRA on ``nn.Linear`` projections (no variant such as DoRA, no LoRA bias), with
    or without LoRA dropout, and ``modules_to_save`` copies.
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
        return cls.from_index(names, index)

    @classmethod
    def from_index(cls, names: Sequence[str], index: Tensor) -> RowAdapters:
        """The rows' adapters from ``[S]`` positions in ``names`` (each name must have a row)."""
        rows = tuple((index == i).nonzero().squeeze(-1) for i in range(len(names)))
        return cls(tuple(names), index, rows)


@dataclass(frozen=True)
class _GatheredLora:
    """One projection's LoRA factors for a batch.

    For one adapter: its ``a`` (``[r, in]``) and ``b`` (``[out, r]``) and its scaling. For a mixed
    batch: every adapter's factors concatenated along the rank, ``a`` ``[K, in]`` and ``b``
    ``[out, K]`` (``K = n_adapters * r``), and per row a ``[S, 1, K]`` scaling that is the row's
    adapter's ``alpha / r`` on that adapter's block of the rank and 0 elsewhere (0 everywhere for a
    row on the base), so that ``b (scaling * (a x))`` is each row's own ``s_a B_a A_a x``.

    Attributes:
        a: ``[r, in]`` or ``[K, in]``, or None (every row on the base).
        b: ``[out, r]`` or ``[out, K]``.
        scaling: a float (one adapter) or ``[S, 1, K]``.
        dropout: LoRA dropout on the input of the factors (PEFT's module; the identity at 0 or
            in eval mode).
    """

    a: Tensor | None
    b: Tensor | None
    scaling: float | Tensor
    dropout: Callable[[Tensor], Tensor] | None = None


def _lora_forward(module: LoraLinear, lora: _GatheredLora, x: Tensor, *args, **kwargs) -> Tensor:
    """``base(x) + s_a B_a A_a dropout(x)`` per row (the replacement of a LoRA projection's forward).

    Args:
        module: the PEFT LoRA projection.
        lora: its adapters gathered for this batch's rows.
        x: ``[S, T, in]`` inputs (any ``[..., in]`` for one adapter).

    Returns:
        ``[S, T, out]`` in the base's dtype.
    """
    result = module.base_layer(x)  # a plain linear (or a sliced one: decoding.threaded_linears)
    if lora.a is None:
        return result
    h = x.to(lora.a.dtype)
    if lora.dropout is not None:
        h = lora.dropout(h)
    if isinstance(lora.scaling, Tensor):  # mixed: the rank of every adapter, masked per row
        delta = F.linear(F.linear(h, lora.a) * lora.scaling, lora.b)
    else:  # one adapter for every row: as PEFT computes it
        delta = F.linear(F.linear(h, lora.a), lora.b) * lora.scaling
    return (result + delta).to(result.dtype)


def _one(module: LoraLinear, name: str) -> _GatheredLora:
    """Adapter ``name``'s factors of ``module`` (none for the base or an adapter it lacks)."""
    if name == BASE or name not in module.lora_A:
        return _GatheredLora(None, None, 0.0)
    a = module.lora_A[name].weight
    b = module.lora_B[name].weight
    return _GatheredLora(a, b, float(module.scaling[name]), module.lora_dropout[name])


def _gather(module: LoraLinear, rows: RowAdapters) -> _GatheredLora:
    """The factors of ``module`` for the batch's rows (once per block; in the graph with grad on)."""
    trained = [n for n in rows.names if n != BASE and n in module.lora_A]
    if not trained:
        return _GatheredLora(None, None, 0.0)
    if len(rows.names) == 1:
        return _one(module, rows.names[0])
    a = torch.cat([module.lora_A[n].weight for n in trained])  # [K, in]
    b = torch.cat([module.lora_B[n].weight for n in trained], dim=1)  # [out, K]
    # Row masks: block k of the rank scaled for the rows of the k-th trained adapter.
    blocks = torch.zeros(len(rows.names), a.shape[0], dtype=a.dtype, device=a.device)
    start = 0
    for name in trained:
        r = module.lora_A[name].weight.shape[0]
        blocks[rows.names.index(name), start : start + r] = float(module.scaling[name])
        start += r
    scaling = blocks[rows.index].unsqueeze(1)  # [S, 1, K]
    # Every adapter of a team has the same LoRA settings, so one dropout serves all rows (the
    # base's rows get a zero update whatever it drops).
    return _GatheredLora(a, b, scaling, module.lora_dropout[trained[0]])


def _saved_copy(wrapper: ModulesToSaveWrapper, name: str) -> nn.Module:
    """Adapter ``name``'s copy of a ``modules_to_save`` module (the original for the base)."""
    copies = wrapper.modules_to_save
    if name not in copies:  # the base's rows (an nn.ModuleDict has no .get)
        return wrapper.original_module
    return copies[name]


def _saved_forward(wrapper: ModulesToSaveWrapper, rows: RowAdapters, x: Tensor, *args, **kwargs) -> Tensor:
    """A ``modules_to_save`` module with each row's adapter copy (the original module for the base)."""
    if len(rows.names) == 1:
        return _saved_copy(wrapper, rows.names[0])(x, *args, **kwargs)
    parts = [
        _saved_copy(wrapper, name)(x[idx], *args, **kwargs)
        for name, idx in zip(rows.names, rows.rows, strict=True)
    ]
    out = parts[0].new_empty((x.shape[0], *parts[0].shape[1:]))
    for idx, part in zip(rows.rows, parts, strict=True):
        out[idx] = part
    return out


def as_adapter(module: nn.Module, name: str) -> Callable[[Tensor], Tensor]:
    """``module`` as adapter ``name`` runs it, on inputs of any shape (no row structure): its LoRA
    or its ``modules_to_save`` copy, whatever adapter PEFT has active and inside a
    :func:`gathered_lora` block too. A module the adapters do not touch is returned as it is.

    The mixed-adapter step applies the output layer this way to one adapter's response tokens.
    """
    if isinstance(module, ModulesToSaveWrapper):
        return _saved_copy(module, name)
    if isinstance(module, LoraLinear):
        return partial(_lora_forward, module, _one(module, name))
    return module


def adapter_specific(module: nn.Module) -> bool:
    """Whether adapters change ``module`` (a LoRA projection or a ``modules_to_save`` module)."""
    return isinstance(module, (LoraLinear, ModulesToSaveWrapper))


@contextmanager
def gathered_lora(
    policy: nn.Module, adapters: Sequence[str] | RowAdapters, device: torch.device
) -> Iterator[RowAdapters]:
    """Within the block, every LoRA projection and ``modules_to_save`` copy of ``policy`` runs row
    ``s`` with adapter ``adapters[s]`` (``BASE``: none), whatever adapter PEFT has active.

    Call the model without ``adapter_names``. The factors are gathered once, on entry, so the
    adapters must not change inside the block: a training step runs its forward and its backward
    inside (the backward may recompute layers: gradient checkpointing) and steps the optimizer
    after it. Yields the rows' :class:`RowAdapters`.
    """
    rows = adapters if isinstance(adapters, RowAdapters) else RowAdapters.of(adapters, device)
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
        yield rows
    finally:
        for module in patched:
            del module.forward  # the class's forward again
