"""The config's sections: one dataclass per section, each checking its own values.

The error type :class:`ConfigError` names the dotted key and what is allowed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from marft.config.algorithm import AlgorithmConfig
from marft.config.errors import ConfigError, _check
from marft.config.reward import RewardConfig
from marft.config.scale import RayConfig
from marft.config.team import AgentConfig, RoutingConfig, TeamConfig
from marft.config.trackers import (
    LoggerName,
    MlflowConfig,
    TrackioConfig,
    WandbConfig,
    check_logger_names,
)

__all__ = [
    "AgentConfig",
    "AlgorithmConfig",
    "ConfigError",
    "RayConfig",
    "RewardConfig",
    "RoutingConfig",
    "TeamConfig",
    "_check",
]


# --------------------------------------------------------------------------------------------- sections


@dataclass
class TinyModelConfig:
    """The built-in tiny Llama model (random weights, word-level tokenizer trained locally)."""

    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads (must divide ``hidden_size``)."""
    intermediate_size: int = 128
    """MLP width."""
    initializer_range: float = 0.02
    """Std of the random init. A frozen base at 0.02 cannot produce peaked distributions through LoRA
    alone; pair it with ``lora.modules_to_save: [lm_head]`` or raise it to ~0.2."""
    seed: int = 0
    """Seed of the random weights."""
    extra_words: list[str] = field(default_factory=list)
    """Words added to the tokenizer's vocabulary beyond the built-in corpus and the env's words."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            _check(getattr(self, name) > 0, name, "must be a positive integer")
        _check(self.hidden_size % self.num_heads == 0, "num_heads", "must divide hidden_size")
        _check(self.initializer_range > 0, "initializer_range", "must be > 0")


@dataclass
class ModelConfig:
    """A frozen base model: the team's one base (``model``), or one of several (``models``)."""

    name: str = "tiny"
    """``tiny`` for the built-in model, or any Hugging Face causal LM name or local path."""
    gguf_file: str | None = None
    """A GGUF file inside ``name`` (a local folder) to load with transformers' GGUF support."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype of the frozen base. ``auto``: bfloat16 where the device computes it natively (a CUDA
    GPU with ``torch.cuda.is_bf16_supported()``: Ampere and later; a CPU with AVX512-BF16 or AMX,
    as torch reports it), float32 elsewhere; always float32 for ``name: tiny`` (a random base
    built from scratch: its numbers stay the same across hosts). ``float32`` forces full precision
    (``--set model.dtype=float32``). Adapters, the value head and optimizer states are always
    float32."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained``."""
    local_files_only: bool = False
    """Never touch the network when loading ``name`` (also on when ``HF_HUB_OFFLINE=1``)."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the built-in model (used only when ``name: tiny``)."""
    logit_chunk_tokens: int = 512
    """Response tokens whose full-vocabulary logits exist at once when log-probs and entropies are
    taken (policy update, reference and recomputed old log-probs); with a gradient each chunk is
    recomputed in the backward. Memory ~ ``logit_chunk_tokens x vocabulary x 4 bytes x ~4``.
    0: all tokens of a forward at once."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the policy's backward instead of keeping
    them: activation memory per token drops several-fold for about a third more forward work.
    On: a larger ``algorithm.micro_batch_tokens`` fits the same memory."""

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", "must name a model: 'tiny' or a Hugging Face name/path")
        _check(self.logit_chunk_tokens >= 0, "logit_chunk_tokens", "must be >= 0 (0: no chunking)")
        dev = self.device
        _check(
            dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:"),
            "device",
            f"must be auto, cpu, cuda, cuda:N or mps, got {dev!r}",
        )


@dataclass
class LoraSettings:
    """Each agent is one LoRA adapter with these settings (PEFT ``LoraConfig``), or with
    ``shared`` all agents are one."""

    r: int = 8
    """Rank."""
    alpha: float = 16.0
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """LoRA dropout. 0 keeps the PPO ratio exactly 1 at the first epoch."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or ``all-linear``."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules copied and trained in full per agent (e.g. ``[lm_head]`` for the tiny model)."""
    shared: bool = False
    """One adapter, named ``shared``, for every agent: one policy that plays each role through its
    role prompt, trained on all agents' actions in one update (false: an adapter per agent)."""

    def __post_init__(self) -> None:
        _check(self.r > 0, "r", "must be a positive integer")
        _check(self.alpha > 0, "alpha", "must be > 0")
        _check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclass
class EnvConfig:
    """The environment, vectorised over ``n_envs`` copies."""

    name: str = "signal"
    """A registered env name or ``package.module:Class``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of the env, validated against its own config class."""
    n_envs: int = 64
    """Parallel copies; every iteration collects ``n_envs * steps_per_iter`` team steps."""
    horizon: int = 1
    """Maximum steps of one episode; an episode that reaches it ends (and resets)."""
    reward_assignment: Literal["last", "shared", "per_agent"] = "last"
    """``last``: the team reward goes to the last agent in acting order (as in the MARFT paper);
    ``shared``: every agent gets it; ``per_agent``: the env gives each agent its own."""
    max_failure_rate: float = 0.1
    """An episode whose env (or reward function) raises is dropped and counted; the run stops
    when more than this fraction of an iteration's episodes failed."""

    def __post_init__(self) -> None:
        _check(self.n_envs > 0, "n_envs", "must be a positive integer")
        _check(self.horizon > 0, "horizon", "must be a positive integer")
        _check(0.0 <= self.max_failure_rate <= 1.0, "max_failure_rate", "must be in [0, 1]")


@dataclass
class SamplingConfig:
    """Sampling of the agents' actions during training rollouts."""

    temperature: float = 1.0
    """Softmax temperature; the PPO ratio uses log-probs of this same distribution."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off)."""
    max_new_tokens: int = 8
    """Longest action, in tokens."""
    backend: str = "hf"
    """Generation backend: ``hf`` (transformers, in-process, shares the learner's weights) or
    ``vllm`` (vLLM's engine; see ``vllm:`` and docs/backends.md)."""
    decode: Literal["fast", "eager"] = "fast"
    """The ``hf`` backend's decode loop: ``fast`` (each row's LoRA gathered once per call and applied
    as batched matmuls, a KV cache allocated once; :mod:`marft.models.decoding`) or ``eager``
    (PEFT's mixed-adapter forward and transformers' concatenating cache). ``fast`` falls back to
    ``eager`` for adapters it does not serve (DoRA and other LoRA variants) and says so."""

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "temperature", "must be > 0")
        _check(self.top_k >= 0, "top_k", "must be >= 0 (0 turns it off)")
        _check(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        _check(self.max_new_tokens > 0, "max_new_tokens", "must be a positive integer")


@dataclass
class VLLMConfig:
    """The vLLM generation backend (``sampling.backend: vllm``): vLLM's offline engine in the
    training process, every agent's adapter served in one batch."""

    gpu_memory_utilization: float = 0.4
    """CUDA: the share of GPU memory vLLM may take (weights and KV cache); the learner uses the rest."""
    kv_cache_gb: float = 1.0
    """CPU: the KV cache size in GiB."""
    sleep: bool = True
    """CUDA: put the engine to sleep (level 1: weights offloaded, KV cache freed) between rollout
    and update, so the learner has the memory; it wakes at the next rollout."""
    max_model_len: int | None = None
    """Longest prompt plus action, in tokens (None: the model's own limit; lower it to save KV cache)."""
    enforce_eager: bool = True
    """No CUDA graphs or compilation: faster start, slower sampling; set false for long GPU runs."""
    adapter_dir: str | None = None
    """Where new adapter versions are written for the engine (default: a new folder in /dev/shm,
    which is RAM-backed)."""

    def __post_init__(self) -> None:
        _check(0.0 < self.gpu_memory_utilization < 1.0, "gpu_memory_utilization", "must be in (0, 1)")
        _check(self.kv_cache_gb > 0, "kv_cache_gb", "must be > 0")
        _check(self.max_model_len is None or self.max_model_len > 0, "max_model_len", "must be > 0 or null")


@dataclass
class RunConfig:
    """Length, seeding and logging of a training run."""

    iterations: int = 60
    """Training iterations (one rollout + one update each)."""
    steps_per_iter: int = 1
    """Team steps each env copy takes per iteration (T in the ``[B, T, N]`` buffers)."""
    seed: int = 0
    """Seed of python, numpy, torch, the envs and sampling."""
    transcripts_per_iter: int = 2
    """Finished episodes written to ``transcripts.jsonl`` per iteration."""
    loggers: list[LoggerName] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that receive every metrics row, the config, the transcripts and the
    report, besides ``metrics.jsonl`` (always written): ``tensorboard``, ``wandb``, ``mlflow``,
    ``trackio`` (each but TensorBoard an extra: ``pip install 'marft[wandb]'``). See ``docs/runs.md``."""
    tensorboard: bool | None = None
    """Replaced by ``loggers`` (kept so that runs of an older marft resume): false takes
    ``tensorboard`` out of ``loggers``, true puts it in."""
    name: str | None = None
    """The run's name in the trackers (null: the run directory's name)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases settings (used when ``loggers`` names ``wandb``)."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """MLflow settings (used when ``loggers`` names ``mlflow``)."""
    trackio: TrackioConfig = field(default_factory=TrackioConfig)
    """Trackio settings (used when ``loggers`` names ``trackio``)."""
    progress: bool = True
    """Show a progress bar with the live return."""
    torch_threads: int = 0
    """CPU threads for torch (0: as many as this process may use: its CPU affinity, capped by a
    cgroup CPU quota; fewer while other processes take some of those cores). N > 0: N, fixed."""
    report: bool = True
    """Write ``report.html`` (plots and transcripts, see ``marft report``) at the end of the run."""
    checkpoint_every: int = 10
    """Save a complete checkpoint every this many iterations (0: only at the end and on a signal)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep (0: keep all)."""
    max_nonfinite_in_row: int = 3
    """Abort when an agent's update is skipped for a non-finite loss or gradient this many
    iterations in a row."""
    token_budget: int | None = None
    """Stop after the iteration in which the team's generated training tokens (every agent's
    sampled tokens, summed over iterations) reach this many, if that comes before ``iterations``:
    runs compared at matched compute get the same budget (``benchmarks/team_vs_single.py``)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Rollout workers on Ray (``run.ray.address``; null: one process). See ``docs/scaling.md``."""

    def __post_init__(self) -> None:
        _check(self.iterations > 0, "iterations", "must be a positive integer")
        _check(self.steps_per_iter > 0, "steps_per_iter", "must be a positive integer")
        _check(self.transcripts_per_iter >= 0, "transcripts_per_iter", "must be >= 0")
        _check(self.torch_threads >= 0, "torch_threads", "must be >= 0")
        _check(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0: only at the end)")
        _check(self.keep_checkpoints >= 0, "keep_checkpoints", "must be >= 0 (0: keep all)")
        _check(self.max_nonfinite_in_row >= 1, "max_nonfinite_in_row", "must be >= 1")
        check_logger_names(self.loggers)
        if self.tensorboard is not None:
            warnings.warn(
                "run.tensorboard is replaced by run.loggers ([] for none)", FutureWarning, stacklevel=2
            )
            rest = [n for n in self.loggers if n != "tensorboard"]
            self.loggers = ["tensorboard", *rest] if self.tensorboard else rest
            self.tensorboard = None
        _check(
            self.token_budget is None or self.token_budget > 0,
            "token_budget",
            "must be a positive integer or null",
        )


@dataclass
class Config:
    """A whole run: every section has defaults except the team."""

    team: TeamConfig
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    """Several bases by name (teams of different base models, docs/team.md): each agent names its
    ``base`` (default: the first). Empty: the one base ``model``. With ``models``, ``model`` is
    the first base (left out, or the same)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    env: EnvConfig = field(default_factory=EnvConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        critic = self.algorithm.critic_base
        _check(
            critic is None or critic in self.bases(),
            "algorithm.critic_base",
            f"unknown base {critic!r}; the bases are: {', '.join(self.bases())}",
        )
        if not self.models:
            for i, agent in enumerate(self.team.agents):
                _check(
                    agent.base is None,
                    f"team.agents.{i}.base",
                    "names a base, but the config has no models: give the bases under models",
                )
            return
        first = next(iter(self.models.values()))
        _check(
            self.model in (ModelConfig(), first),
            "model",
            "give the bases under models (the first is the default) and leave model out",
        )
        self.model = first
        for i, agent in enumerate(self.team.agents):
            _check(
                agent.base is None or agent.base in self.models,
                f"team.agents.{i}.base",
                f"unknown base {agent.base!r}; models has: {', '.join(self.models)}",
            )

    def bases(self) -> dict[str, ModelConfig]:
        """Every base by name: ``models``, or ``{"base": model}`` for a team of one base."""
        return dict(self.models) if self.models else {"base": self.model}

    def base_of(self) -> dict[str, str]:
        """Each agent's base: its ``base``, else the first."""
        first = next(iter(self.bases()))
        return {a.role: a.base or first for a in self.team.agents}

    def critic_base(self) -> str:
        """The base the critic's value head sits on: ``algorithm.critic_base``, else the first."""
        return self.algorithm.critic_base or next(iter(self.bases()))

    def kl_coefs(self) -> dict[str, float]:
        """Each agent's KL coefficient: its own ``kl_coef``, else ``algorithm.kl_coef``."""
        default = self.algorithm.kl_coef
        return {a.role: default if a.kl_coef is None else a.kl_coef for a in self.team.agents}

    def uses_kl(self) -> bool:
        """Some agent has a KL term to the reference (the scoring phase then scores it)."""
        return max(self.kl_coefs().values()) > 0
