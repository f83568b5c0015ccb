"""How close marft's generation and policy update run to this machine's limits (a roofline yardstick).

Three parts, printed as one table (``--json PATH`` writes every figure):

1. **The hardware, measured here.** Square matmuls (CPU: 512, 1024, 2048; CUDA: 4096, 8192) in
   float32 and, where they work, bfloat16 and float16, median of repeats, in GFLOP/s (``2 n^3``
   FLOPs each; the best size is the "peak" used below). A dtype too slow to time in a few seconds
   (float16 on most CPUs) is reported at the sizes it managed. Memory bandwidth: a copy of a large
   tensor (CPU 256 MiB, CUDA 2 GiB), counting the bytes read and the bytes written. These are
   *achieved* rates of simple kernels, not datasheet peaks. After the run the base dtype's matmul
   (best size) and the copy are measured again, and the floors use the better of each: on a shared
   machine the two differ, and the table shows both. On CUDA float32 matmuls run as torch is set
   (TF32 off by default; the table says which).

2. **The model, counted from the built team** (``Trainer.setup()``; nothing is guessed from the
   name): parameters of the frozen base and of each agent's adapter; ``W`` = the weights of every
   ``nn.Linear`` of the base (``lm_head`` included, so a tied output layer counts once as the
   embedding it shares); ``A`` = one adapter's LoRA matrices (``r (in + out)`` per target);
   ``layers``, ``q_dim`` = heads x head_dim, ``kv_dim`` = kv heads x head_dim.

   *Decode.* One token at context ``c`` (the keys it attends to, itself included) costs
   ``F_tok(c) = 2 (W + A) + 4 layers q_dim c`` FLOPs (the matmuls, then ``QK^T`` and ``AV``).
   One decode step of ``n`` rows reads ``B_w`` bytes of weights (every base parameter in its dtype
   except the input embedding table, of which only ``n`` rows are read (a tied table is read whole
   by the output layer), plus the active adapters' tensors, float32; a ``modules_to_save`` copy
   replaces the module it copies) and the KV cache, ``2 layers kv_dim bytes`` per context token.
   Its floor is ``max(FLOPs / peak matmul rate, bytes / bandwidth)``, with the peak of the base's
   dtype. The prefill (step 0 of each generation call: every real prompt token, the output layer
   only at the last one) is floored the same way.
   The **phase floor** sums this over every generation call of the iteration (recorded by wrapping
   the backend's ``generate``) and every step, counting only real tokens: rows that have ended
   their action and left padding are work marft does that the floor does not count. The
   **typical step** is the mean batch (rows alive per decode step) at the mean context; its floor
   gives a tokens/s ceiling, ``batch / step floor``.

   *Training.* Every micro-batch of the policy phase is recorded (wrapping
   ``PolicyUpdater.micro_batch_loss`` and, with ``algorithm.policy_step=mixed``,
   ``PolicyUpdater.mixed_micro_batch``), so ``ppo_epochs``, minibatches, early stops and shared
   adapters are counted as they ran. A row runs the decoder over its ``p + r`` real prompt and
   response tokens (:func:`marft.models.sequences.response_states`) and the output layer over its
   ``r`` response tokens only (:func:`marft.models.logprobs.chunked_token_logprobs`). The base is
   frozen: its backward computes the activations' gradients (one more matmul of each weight's
   size) but no weight gradients, so the base costs 2x its forward; attention's backward is 2x
   its forward (``dQ, dK, dV`` from ``dS`` and ``dP``); LoRA's backward computes both (3x in all).
   Per row::

       F_train = (p + r) (2 * 2 W_body + 3 * 2 A) + 3 * 4 layers q_dim (p + r)(p + r + 1) / 2
                 + r * k * 2 V H        (k = 2 for a frozen output layer, 3 when it trains)

   (``W_body`` = ``W`` minus the output layer ``V H``). ``model.gradient_checkpointing`` adds one
   more forward of the body (its ``2 W_body``, ``2 A`` and attention terms) and a third read of
   the weights. Each micro-batch also reads the weights twice (forward and backward);
   its floor is ``max(FLOPs / peak, 2 B_w / bandwidth)``. "Trained tokens" are the real
   ``p + r`` tokens of every row of every micro-batch (so ``ppo_epochs`` times each action's
   tokens when no epoch stops early).

3. **marft's real phases.** ``--iterations N`` iterations of the config (the first is a warm-up and
   is not counted when N > 1): generated tokens/s (``generated_tokens / time_generate_s``; the
   time includes prefill, sampling and the Python loop) against the phase floor, and trained
   tokens/s (trained tokens / ``time_policy_s``, which includes the optimizer steps) against the
   training floor. ``fraction of floor`` = floor seconds / measured seconds (1.0 would be the
   hardware's limit; it cannot exceed 1 unless the measured peak rates are too low).

Usage::

    python benchmarks/roofline.py demo
    python benchmarks/roofline.py smollm2_arith --set model.name=$HOME/.cache/marft/smollm2-135m-instruct \\
        --set env.n_envs=4 --json roofline_smollm2_cpu.json
    python benchmarks/roofline.py my_team.yaml --device cuda --iterations 3 --set sampling.max_new_tokens=64
    python benchmarks/roofline.py demo --hardware-only      # the matmul and copy rates alone

The config is a preset name or a YAML path, as ``marft train`` takes, with repeated ``--set
key=value`` overrides; ``run.progress=false``, ``run.loggers=[]`` and ``run.report=false`` are
always added, and ``--device`` sets ``model.device``. Rollout workers on Ray are not supported
(generation must run in this process to be recorded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIB = 2**20


# ---------------------------------------------------------------------------------------- hardware


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` fails clearly without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, budget_s: float) -> float:
    """The median wall time of ``fn()`` over up to ``repeats`` timed runs after one warm-up run;
    fewer runs when they would exceed ``budget_s`` in all."""
    fn()
    _sync(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (not times or spent + times[-1] <= budget_s):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return statistics.median(times)


@dataclass
class Hardware:
    """What this machine achieved on simple kernels.

    Attributes:
        device: ``cpu`` or ``cuda:N``.
        name: the CPU's model name or the GPU's name.
        threads: torch's CPU threads while measuring.
        cpu_capability: ``torch.backends.cpu.get_cpu_capability()``.
        tf32: whether CUDA float32 matmuls may use TF32.
        matmul_gflops: dtype -> square size -> GFLOP/s (a size missing: too slow to time).
        matmul_notes: dtype -> why it was not measured, or stopped early.
        copy_gbs: memory bandwidth of a large copy, bytes read plus written, GB/s (1e9).
        copy_mib: the copied tensor's size.
    """

    device: str
    name: str
    threads: int
    cpu_capability: str
    tf32: bool
    matmul_gflops: dict[str, dict[int, float]] = field(default_factory=dict)
    matmul_notes: dict[str, str] = field(default_factory=dict)
    copy_gbs: float = 0.0
    copy_mib: int = 0

    def peak_gflops(self, dtype: str) -> float | None:
        """The best measured matmul rate of ``dtype`` (None: not measured)."""
        rates = self.matmul_gflops.get(dtype)
        return max(rates.values()) if rates else None


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``unknown`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def measure_matmul(
    device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int, budget_s: float
) -> tuple[dict[int, float], str]:
    """GFLOP/s of ``n x n @ n x n`` at each size (``2 n^3`` FLOPs), and a note: why a dtype or a
    size was skipped (unsupported, or one run would take longer than ``budget_s``)."""
    rates: dict[int, float] = {}
    rate = None  # GFLOP/s at the previous size, to skip a size that would take too long
    for n in [256, *sizes] if device.type == "cpu" else sizes:
        flops = 2.0 * n**3
        if rate is not None and flops / (rate * 1e9) > budget_s:
            return rates, f"size {n} skipped: one matmul would take about {flops / rate / 1e9:.0f} s"
        try:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            seconds = median_seconds(lambda a=a, b=b: torch.mm(a, b), device, repeats, budget_s)
        except (RuntimeError, TypeError) as e:  # an unsupported dtype on this device
            return rates, f"not supported: {str(e).splitlines()[0][:80]}"
        rate = flops / seconds / 1e9
        if n in sizes:
            rates[n] = rate
    return rates, ""


def measure_copy(device: torch.device, mib: int, repeats: int) -> float:
    """GB/s of ``dst.copy_(src)`` for a ``mib``-MiB float32 tensor, counting read and write."""
    src = torch.ones(mib * MIB // 4, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, repeats, budget_s=5.0)
    return 2 * mib * MIB / seconds / 1e9


def measure_hardware(device: torch.device, sizes: list[int] | None = None, repeats: int = 5) -> Hardware:
    """Matmul rates in each dtype and the copy bandwidth of ``device`` (see the module docstring)."""
    cuda = device.type == "cuda"
    sizes = sizes or ([4096, 8192] if cuda else [512, 1024, 2048])
    hw = Hardware(
        device=str(device),
        name=torch.cuda.get_device_name(device) if cuda else cpu_name(),
        threads=torch.get_num_threads(),
        cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
        tf32=bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False,
    )
    for name, dtype in DTYPES.items():
        rates, note = measure_matmul(device, dtype, sizes, repeats, budget_s=3.0)
        if rates:
            hw.matmul_gflops[name] = rates
        if note:
            hw.matmul_notes[name] = note
    hw.copy_mib = 2048 if cuda else 256
    hw.copy_gbs = measure_copy(device, hw.copy_mib, repeats)
    return hw


# ------------------------------------------------------------------------------------------ model


@dataclass
class ModelCounts:
    """The sizes the floors depend on, counted from the built team model.

    Attributes:
        dtype: the base's dtype.
        base_params: parameters of the frozen base (a tied table once).
        adapter_params: adapter name -> its trainable parameters (LoRA and ``modules_to_save``).
        linear: ``W``, weights of the base's ``nn.Linear`` modules, the output layer included.
        lm_head: ``V x H``, the output layer's weights.
        lora: ``A``, one adapter's LoRA matrices (the largest adapter).
        layers, q_dim, kv_dim, vocab, hidden: the attention and vocabulary sizes.
        weight_bytes: bytes of base weights a forward reads (all but an untied input table, minus
            modules a saved copy replaces).
        adapter_bytes: one adapter's bytes (the largest).
        kv_bytes_per_token: ``2 layers kv_dim`` x the base dtype's bytes.
        lm_head_trains: the output layer is an adapter's ``modules_to_save`` copy.
        gradient_checkpointing: ``model.gradient_checkpointing``.
    """

    dtype: str
    base_params: int
    adapter_params: dict[str, int]
    linear: int
    lm_head: int
    lora: int
    layers: int
    q_dim: int
    kv_dim: int
    vocab: int
    hidden: int
    weight_bytes: int
    adapter_bytes: int
    kv_bytes_per_token: int
    lm_head_trains: bool
    gradient_checkpointing: bool

    @property
    def body(self) -> int:
        """``W_body``: the Linear weights without the output layer."""
        return self.linear - self.lm_head


def count_model(team: Any, gradient_checkpointing: bool) -> ModelCounts:
    """:class:`ModelCounts` of a :class:`marft.models.team_model.TeamModel`."""
    from peft.utils import ModulesToSaveWrapper

    base = team.policy.get_base_model()
    text = base.config.get_text_config()
    base_named = list(team.base_parameters())
    dtype = next(p.dtype for _, p in base_named if p.is_floating_point())
    esize = torch.finfo(dtype).bits // 8
    linear = lm_head = 0
    out_module = base.get_output_embeddings()
    lm_head_trains = isinstance(out_module, ModulesToSaveWrapper)  # an agent's own output layer
    out = getattr(out_module, "original_module", out_module)
    for name, m in base.named_modules():
        if isinstance(m, torch.nn.Linear) and "lora_" not in name and ".modules_to_save." not in name:
            linear += m.in_features * m.out_features
            if m is out:
                lm_head = m.in_features * m.out_features
    replaced = sum(
        p.numel() * p.element_size()
        for m in base.modules()
        if isinstance(m, ModulesToSaveWrapper)
        for p in m.original_module.parameters()
    )
    emb = base.get_input_embeddings().weight
    tied = out is not None and out.weight.data_ptr() == emb.data_ptr()
    weight_bytes = sum(p.numel() * p.element_size() for _, p in base_named) - replaced
    if not tied:
        weight_bytes -= emb.numel() * emb.element_size()
    adapters = {a: team.named_adapter_parameters(a) for a in team.adapters}
    lora = max(sum(p.numel() for n, p in ps if ".lora_" in n) for ps in adapters.values())
    adapter_bytes = max(sum(p.numel() * p.element_size() for _, p in ps) for ps in adapters.values())
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    layers = text.num_hidden_layers
    return ModelCounts(
        dtype=str(dtype).removeprefix("torch."),
        base_params=sum(p.numel() for _, p in base_named),
        adapter_params={a: sum(p.numel() for _, p in ps) for a, ps in adapters.items()},
        linear=linear,
        lm_head=lm_head,
        lora=lora,
        layers=layers,
        q_dim=heads * head_dim,
        kv_dim=kv_heads * head_dim,
        vocab=text.vocab_size,
        hidden=text.hidden_size,
        weight_bytes=weight_bytes,
        adapter_bytes=adapter_bytes,
        kv_bytes_per_token=2 * layers * kv_heads * head_dim * esize,
        lm_head_trains=lm_head_trains,
        gradient_checkpointing=gradient_checkpointing,
    )


# ----------------------------------------------------------------------------------------- floors


@dataclass
class Rates:
    """The rates the floors divide by: FLOP/s of the base's dtype and bytes/s."""

    flops: float
    bytes: float


@dataclass
class GenCall:
    """One recorded generation call: ``[S, P]`` prompt mask, ``[S, L]`` response mask, and how many
    distinct adapters its rows ran."""

    prompt_mask: Tensor
    response_mask: Tensor
    adapters: int


@dataclass
class DecodeFloor:
    """Floors of the generation calls of one iteration (seconds), with the work they count.

    Attributes:
        seconds: the phase floor (prefill and decode steps).
        compute_s, bandwidth_s: the decode steps' compute-only and bytes-only sums.
        prefill_s: the prefill steps' floor.
        steps: decode steps (after the prefill).
        tokens: real generated tokens (the prefill's first token included).
        rows_per_step: mean rows alive per decode step (the typical batch).
        context: mean context per decoded token.
    """

    seconds: float = 0.0
    compute_s: float = 0.0
    bandwidth_s: float = 0.0
    prefill_s: float = 0.0
    steps: int = 0
    tokens: int = 0
    rows_per_step: float = 0.0
    context: float = 0.0


def decode_step_flops(m: ModelCounts, rows: Tensor | float, context: Tensor | float) -> Tensor | float:
    """FLOPs of one decode step of ``rows`` tokens attending to ``context`` keys in all:
    ``rows 2 (W + A) + 4 layers q_dim context``."""
    return rows * 2 * (m.linear + m.lora) + 4 * m.layers * m.q_dim * context


def decode_floor(calls: list[GenCall], m: ModelCounts, rates: Rates) -> DecodeFloor:
    """The floor of these generation calls (see the module docstring), vectorised per call."""
    f = DecodeFloor()
    rows_total = ctx_total = 0.0
    for call in calls:
        p = call.prompt_mask.sum(1).double().cpu()  # [S] real prompt tokens
        alive = call.response_mask.double().cpu()  # [S, L] 1 where the row produced token t
        weights = m.weight_bytes + call.adapters * m.adapter_bytes
        # Prefill: every real prompt token through the body, the output layer at the last one.
        pre_flops = float(
            p.sum() * 2 * (m.body + m.lora)
            + alive[:, 0].sum() * 2 * m.lm_head
            + 4 * m.layers * m.q_dim * (p * (p + 1) / 2).sum()
        )
        pre_bytes = weights + float(p.sum()) * m.kv_bytes_per_token
        f.prefill_s += max(pre_flops / rates.flops, pre_bytes / rates.bytes)
        f.tokens += int(alive.sum())
        if alive.shape[1] < 2:
            continue
        t = torch.arange(1, alive.shape[1], dtype=torch.float64)
        live = alive[:, 1:]  # [S, L-1] rows decoding at steps 1..L-1
        n = live.sum(0)  # [L-1]
        ctx = ((p[:, None] + t[None]) * live).sum(0)  # keys attended at step t: p + t, its own included
        step = n > 0
        flops = decode_step_flops(m, n, ctx)[step]
        nbytes = (weights + ctx * m.kv_bytes_per_token)[step]
        compute, bandwidth = flops / rates.flops, nbytes / rates.bytes
        f.compute_s += float(compute.sum())
        f.bandwidth_s += float(bandwidth.sum())
        f.seconds += float(torch.maximum(compute, bandwidth).sum())
        f.steps += int(step.sum())
        rows_total += float(n.sum())
        ctx_total += float(ctx.sum())
    f.seconds += f.prefill_s
    f.rows_per_step = rows_total / max(f.steps, 1)
    f.context = ctx_total / max(rows_total, 1.0)
    return f


@dataclass
class TrainFloor:
    """Floor of one policy phase's micro-batches (seconds), with the work it counts.

    Attributes:
        seconds: sum over micro-batches of max(compute, weight reads).
        compute_s, bandwidth_s: the compute-only and weight-reads-only sums.
        micro_batches: forward+backward passes.
        tokens: real prompt + response tokens through them (all epochs).
        padded_tokens: what the decoder ran over (rows x trimmed width).
        response_tokens: real response tokens (through the output layer).
        flops: the FLOPs counted.
    """

    seconds: float = 0.0
    compute_s: float = 0.0
    bandwidth_s: float = 0.0
    micro_batches: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    response_tokens: int = 0
    flops: float = 0.0


def train_token_flops(m: ModelCounts, tokens: Tensor | float, response: Tensor | float) -> Tensor | float:
    """FLOPs of a forward and backward of rows with ``tokens`` real tokens and ``response`` of them
    responses (the formula of the module docstring; the attention term per row)."""
    redo = 1 if m.gradient_checkpointing else 0  # the body's forward is run again in the backward
    body = (2 + redo) * 2 * m.body  # forward and the activations' gradients (no weight gradients)
    lora = (3 + redo) * 2 * m.lora  # forward, the activations' and the weights' gradients
    attn = (3 + redo) * 4 * m.layers * m.q_dim * tokens * (tokens + 1) / 2
    head = (3 if m.lm_head_trains else 2) * 2 * m.lm_head  # not checkpointed
    return tokens * (body + lora) + attn + response * head


def train_floor(batches: list[tuple[Tensor, Tensor]], m: ModelCounts, rates: Rates) -> TrainFloor:
    """The floor of recorded micro-batches, each a ``([m, P] prompt mask, [m, L] response mask)``
    pair after trimming, as the policy update ran them."""
    f = TrainFloor()
    reads = (3 if m.gradient_checkpointing else 2) * (m.weight_bytes + m.adapter_bytes)
    for prompt_mask, response_mask in batches:
        p = prompt_mask.sum(1).double().cpu()
        r = response_mask.sum(1).double().cpu()
        flops = float(train_token_flops(m, p + r, r).sum())
        compute, bandwidth = flops / rates.flops, reads / rates.bytes
        f.compute_s += compute
        f.bandwidth_s += bandwidth
        f.seconds += max(compute, bandwidth)
        f.micro_batches += 1
        f.tokens += int((p + r).sum())
        f.response_tokens += int(r.sum())
        f.padded_tokens += prompt_mask.shape[0] * (prompt_mask.shape[1] + response_mask.shape[1])
        f.flops += flops
    return f


# ------------------------------------------------------------------------------------ the real run


class Recorder:
    """Wraps the trainer's generation backend and policy updater to record the shapes each
    generation call and each micro-batch ran (tensors kept by reference; nothing is computed in
    the timed code)."""

    def __init__(self, trainer: Any) -> None:
        from marft.learner.batching import rows_of, sequences

        self.calls: list[GenCall] = []
        self.batches: list[tuple[Tensor, Tensor]] = []
        self._pending: list[tuple[Any, Tensor]] = []
        self._rows_of, self._sequences = rows_of, sequences
        backend, updater = trainer.parts.backend, trainer.parts.learner.policy
        if not hasattr(backend, "generate"):
            raise SystemExit("roofline.py needs in-process generation (run.ray.enabled=false)")
        generate = backend.generate
        loss = updater.micro_batch_loss
        mixed = updater.mixed_micro_batch

        def recorded_generate(prompts: Any, adapters: Any, limits: Any = None, keys: Any = None) -> Any:
            gen = generate(prompts, adapters, limits, keys)
            self.calls.append(GenCall(prompts.mask, gen.response_mask, len(set(adapters))))
            return gen

        def recorded_loss(batch: Any, old: Tensor, idx: Tensor, norm: Any) -> Any:
            self._pending.append((batch, idx))
            return loss(batch, old, idx, norm)

        def recorded_mixed(batch: Any, old: Tensor, idx: Tensor, adapters: Any, norms: Any) -> Any:
            self._pending.append((batch, idx))
            return mixed(batch, old, idx, adapters, norms)

        backend.generate = recorded_generate
        updater.micro_batch_loss = recorded_loss
        updater.mixed_micro_batch = recorded_mixed

    def take(self) -> tuple[list[GenCall], list[tuple[Tensor, Tensor]]]:
        """The calls and the (trimmed) micro-batches recorded since the last ``take``."""
        batches = []
        for batch, idx in self._pending:
            rows = self._rows_of(self._sequences(batch.actions), idx)
            batches.append((rows.prompt_mask, rows.response_mask))
        calls, self.calls, self._pending = self.calls, [], []
        return calls, batches


@dataclass
class Measured:
    """One iteration as it ran: its metrics and the recorded generation calls and micro-batches."""

    row: dict[str, Any]
    calls: list[GenCall]
    batches: list[tuple[Tensor, Tensor]]


def run_phases(trainer: Any, iterations: int) -> list[Measured]:
    """Run ``iterations`` iterations; per iteration its measured seconds and tokens, and the work
    it did (the floors are computed afterwards, from rates measured around the run)."""
    device = trainer.parts.model.device
    recorder = Recorder(trainer)
    out = []
    for it in range(iterations):
        t0 = time.perf_counter()
        step = trainer.run_iteration(it)
        _sync(device)
        seconds = time.perf_counter() - t0
        calls, batches = recorder.take()
        row = {
            "iteration": it,
            "time_iter_s": seconds,
            "time_generate_s": step.trajectory.timings.get("generate", 0.0),
            "time_policy_s": step.timings["policy"],
            "time_fwd_bwd_s": step.policy.fwd_bwd_s,
            "generated_tokens": step.collect.generated_tokens,
            "generation_calls": len(calls),
            "optimizer_steps": {k: a.optimizer_steps for k, a in step.policy.adapters.items()},
            "kl_early_stop": any(a.kl_early_stop for a in step.policy.adapters.values()),
        }
        out.append(Measured(row, calls, batches))
    return out


def with_floors(runs: list[Measured], m: ModelCounts, rates: Rates) -> list[dict]:
    """Each iteration's row with its ``decode`` and ``train`` floors."""
    return [
        {
            **r.row,
            "decode": asdict(decode_floor(r.calls, m, rates)),
            "train": asdict(train_floor(r.batches, m, rates)),
        }
        for r in runs
    ]


def remeasure(hw: Hardware, device: torch.device, dtype: str, repeats: int) -> dict[str, float]:
    """The base dtype's matmul at the best size and the copy again, after the run: on a shared
    machine the two measurements differ, and the floors use the better of each."""
    sizes = hw.matmul_gflops.get(dtype, {})
    best = max(sizes, key=sizes.get) if sizes else None
    again: dict[str, float] = {"copy_gbs": measure_copy(device, hw.copy_mib, repeats)}
    if best is not None:
        rates, _ = measure_matmul(device, DTYPES[dtype], [best], repeats, budget_s=3.0)
        if best in rates:
            again[f"matmul_{dtype}_{best}_gflops"] = rates[best]
    return again


def summarise(rows: list[dict], m: ModelCounts, rates: Rates) -> dict[str, float]:
    """Sums over the counted iterations (all but the first when there are several), and the
    measured rates against the floors."""
    kept = rows[1:] if len(rows) > 1 else rows
    s = {k: sum(r[k] for r in kept) for k in ("time_generate_s", "time_policy_s", "time_fwd_bwd_s")}
    s["time_iter_s"] = statistics.mean(r["time_iter_s"] for r in kept)
    s["generated_tokens"] = sum(r["generated_tokens"] for r in kept)
    for part in ("decode", "train"):
        for k in kept[0][part]:
            if k not in ("rows_per_step", "context"):  # means, combined below
                s[f"{part}_{k}"] = sum(r[part][k] for r in kept)
    steps = max(s["decode_steps"], 1)
    batch = sum(r["decode"]["rows_per_step"] * r["decode"]["steps"] for r in kept) / steps
    context = sum(r["decode"]["context"] * r["decode"]["rows_per_step"] * r["decode"]["steps"] for r in kept)
    context /= max(batch * steps, 1.0)
    weights = m.weight_bytes + m.adapter_bytes
    step_flops = decode_step_flops(m, batch, batch * context)
    step_bytes = weights + batch * context * m.kv_bytes_per_token
    step_compute, step_bw = step_flops / rates.flops, step_bytes / rates.bytes
    s.update(
        typical_batch=batch,
        typical_context=context,
        token_flops=decode_step_flops(m, 1, context),
        step_bytes=step_bytes,
        step_compute_floor_s=step_compute,
        step_bandwidth_floor_s=step_bw,
        step_floor_s=max(step_compute, step_bw),
        step_floor_tokens_per_s=batch / max(step_compute, step_bw),
        generated_tokens_per_s=s["generated_tokens"] / s["time_generate_s"],
        decode_floor_tokens_per_s=s["decode_tokens"] / s["decode_seconds"],
        decode_fraction=s["decode_seconds"] / s["time_generate_s"],
        trained_tokens_per_s=s["train_tokens"] / s["time_policy_s"],
        train_flops_per_token=s["train_flops"] / max(s["train_tokens"], 1),
        train_floor_tokens_per_s=s["train_tokens"] / s["train_seconds"] if s["train_seconds"] else 0.0,
        train_fraction=s["train_seconds"] / s["time_policy_s"],
        train_fraction_fwd_bwd=s["train_seconds"] / s["time_fwd_bwd_s"] if s["time_fwd_bwd_s"] else 0.0,
        counted_iterations=len(kept),
    )
    return s


# ------------------------------------------------------------------------------------------ report


def _n(x: float) -> str:
    """A count with a unit prefix (k, M, G, T)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def print_report(
    out: dict[str, Any], hw: Hardware, m: ModelCounts | None, s: dict[str, float] | None
) -> None:
    """The readable table of ``out`` (what ``--json`` writes)."""
    cfg_name = out["config"]
    lines = [f"== hardware: {hw.device}, {hw.name}, {hw.threads} torch threads, cpu {hw.cpu_capability}"]
    for dtype in DTYPES:
        rates = hw.matmul_gflops.get(dtype, {})
        got = ", ".join(f"{n}: {g:.1f}" for n, g in rates.items()) or "-"
        note = f"  ({hw.matmul_notes[dtype]})" if dtype in hw.matmul_notes else ""
        tf32 = " [TF32 on]" if dtype == "float32" and hw.tf32 else ""
        lines.append(f"   matmul {dtype:>8}{tf32} GFLOP/s by size: {got}{note}")
    lines.append(f"   copy {hw.copy_mib} MiB: {hw.copy_gbs:.1f} GB/s (read + write)")
    if "hardware_after_run" in out:
        again = ", ".join(f"{k} {v:.1f}" for k, v in out["hardware_after_run"].items())
        r = out["rates"]
        lines.append(f"   again after the run: {again}")
        lines.append(f"   floors use the better: {r['flops'] / 1e9:.1f} GFLOP/s, {r['bytes'] / 1e9:.1f} GB/s")
    if m is not None:
        adapters = ", ".join(f"{a} {_n(n)}" for a, n in m.adapter_params.items())
        lines += [
            f"== model ({cfg_name}): base {_n(m.base_params)} parameters in {m.dtype}; adapters: {adapters}",
            f"   Linear W {_n(m.linear)} (output layer {_n(m.lm_head)}), LoRA A {_n(m.lora)}; "
            f"{m.layers} layers, q_dim {m.q_dim}, kv_dim {m.kv_dim}, vocab {m.vocab}",
            f"   weights read per step {m.weight_bytes / MIB:.1f} MiB + adapter "
            f"{m.adapter_bytes / MIB:.2f} MiB; KV cache {m.kv_bytes_per_token / 1024:.1f} KiB per token",
        ]
    if s is not None:
        lines += [
            f"== decode ({s['counted_iterations']:.0f} iteration(s) counted)",
            f"   typical step: batch {s['typical_batch']:.1f} rows, context {s['typical_context']:.1f}; "
            f"{_n(s['token_flops'])}FLOP per token, {s['step_bytes'] / MIB:.1f} MiB read per step",
            f"   step floor: compute {_ms(s['step_compute_floor_s'])}, bandwidth "
            f"{_ms(s['step_bandwidth_floor_s'])} -> {_ms(s['step_floor_s'])} "
            f"= {s['step_floor_tokens_per_s']:.0f} tokens/s at this batch",
            f"   measured: {s['generated_tokens']:.0f} tokens in {s['time_generate_s']:.3f} s = "
            f"{s['generated_tokens_per_s']:.1f} tokens/s; phase floor {s['decode_seconds']:.4f} s "
            f"(prefill {s['decode_prefill_s']:.4f}, {s['decode_steps']:.0f} decode steps) "
            f"= {s['decode_floor_tokens_per_s']:.0f} tokens/s",
            f"   fraction of the decode floor: {s['decode_fraction']:.4f}",
            "== training (policy phase)",
            f"   {s['train_micro_batches']:.0f} micro-batches, {s['train_tokens']:.0f} real tokens "
            f"({s['train_response_tokens']:.0f} response; {s['train_padded_tokens']:.0f} padded); "
            f"{_n(s['train_flops_per_token'])}FLOP per token",
            f"   measured: policy {s['time_policy_s']:.3f} s (fwd+bwd {s['time_fwd_bwd_s']:.3f} s) = "
            f"{s['trained_tokens_per_s']:.1f} trained tokens/s; floor {s['train_seconds']:.4f} s "
            f"(compute {s['train_compute_s']:.4f}, weight reads {s['train_bandwidth_s']:.4f}) "
            f"= {s['train_floor_tokens_per_s']:.0f} tokens/s",
            f"   fraction of the training floor: {s['train_fraction']:.4f} of the policy phase, "
            f"{s['train_fraction_fwd_bwd']:.4f} of fwd+bwd",
        ]
    print("\n".join(lines), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default="demo", help="a preset name or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--iterations", type=int, default=2, help="the first is a warm-up when > 1")
    p.add_argument("--sizes", type=int, nargs="+", help="matmul sizes (CPU 512 1024 2048, CUDA 4096 8192)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hardware-only", action="store_true", help="measure the hardware, build nothing")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args()
    device = pick_device(args.device)
    out: dict[str, Any] = {"config": args.config, "overrides": args.overrides}
    trainer = m = s = None
    if not args.hardware_only:
        from marft.compose import load_config
        from marft.trainer.trainer import Trainer

        ov = ["run.progress=false", "run.loggers=[]", "run.report=false", *args.overrides]
        ov.append(f"model.device={device.type}")
        cfg = load_config(args.config, ov)
        trainer = Trainer(cfg, Path(tempfile.mkdtemp(prefix="marft-roofline-")) / "run")
        trainer.setup()  # sets torch's CPU threads as training does, before the hardware is measured
        m = count_model(trainer.parts.model, cfg.model.gradient_checkpointing)
    hw = measure_hardware(device, args.sizes, args.repeats)
    out["hardware"] = asdict(hw)
    if trainer is not None and m is not None:
        dtype = m.dtype if hw.peak_gflops(m.dtype) is not None else "float32"
        if dtype != m.dtype:
            print(f"no {m.dtype} matmul rate measured; the floors use float32's")
        runs = run_phases(trainer, args.iterations)
        trainer.close()
        after = remeasure(hw, device, dtype, args.repeats)
        out["hardware_after_run"] = after
        flops = max([hw.peak_gflops(dtype) or 0.0, *(v for k, v in after.items() if k.startswith("matmul"))])
        rates = Rates(flops=flops * 1e9, bytes=max(hw.copy_gbs, after["copy_gbs"]) * 1e9)
        rows = with_floors(runs, m, rates)
        s = summarise(rows, m, rates)
        out.update(model=asdict(m), rates=asdict(rates), iterations=rows, summary=s)
    print_report(out, hw, m, s)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
