"""``marft plan``: memory per device for a config, in marft's layout and in MARFT's reference layout.

marft keeps one frozen base per process (the learner, and each rollout worker), with every agent a
LoRA adapter on it and the critic a value head. MARFT's reference code loads a full copy of the
base for every agent and one more for the critic. The planner counts, per process:

- **base**: the frozen base's parameters in ``model.dtype`` (``auto`` as a run resolves it: bfloat16
  on a GPU, taken to be one with native bf16, and on a CPU with native bf16 (this host's); float32
  on other CPUs and for ``tiny``);
- **adapters + optimizer** (learner): every agent's LoRA tensors in fp32 with their gradient and
  Adam's two moments (16 bytes a parameter); a rollout worker holds the adapters only;
- **critic**: the value head with gradient and Adam;
- **KV cache**: generation of ``env.n_envs`` env copies (or the worker's slice) times the widest
  turn of the team, over prompt plus action tokens (vLLM: the share ``vllm.gpu_memory_utilization``
  of the device instead);
- **activations**: one micro-batch's forward kept for the backward through the frozen base (with
  ``model.gradient_checkpointing``: each layer's input, plus one layer recomputed at a time), and
  the response logits in fp32 of at most ``model.logit_chunk_tokens`` tokens (logits, warped,
  log-softmax and their gradient).

Shapes come from the model's config on the ``meta`` device (no weights are read), or from a
built-in shape (``shape:qwen2.5-7b``) for models that are not on this machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from marft.config import Config
from marft.learner.spec import resolve_algorithm
from marft.models.loading import resolve_dtype

GIB = 2**30
ADAM_BYTES = 16  # fp32 parameter, gradient, and Adam's two moments
SHAPES = {
    # Qwen2.5's published configs (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings)
    "qwen2.5-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
    ),
}  # fmt: skip


@dataclass
class ModelShape:
    """What memory depends on: parameter counts and the attention and vocabulary sizes."""

    base_params: int
    lora_params: int  # one agent's adapter
    hidden: int
    layers: int
    kv_dim: int  # key/value width per token and layer (kv heads x head dim)
    intermediate: int
    vocab: int
    heads: int


@dataclass
class DevicePlan:
    """One process's memory in bytes: what it always holds (``items``) and what each phase adds
    while it runs (``phases``; they do not overlap)."""

    name: str
    items: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """The peak: everything held plus the largest phase."""
        return sum(self.items.values()) + max(self.phases.values(), default=0.0)


def _hf_config(cfg: Config, corpus: list[str] | None):
    from transformers import AutoConfig, Qwen2Config

    name = cfg.model.name
    if name.startswith("shape:"):
        key = name.split(":", 1)[1].lower()
        if key not in SHAPES:
            raise ValueError(f"unknown shape {key!r}; known: {', '.join(SHAPES)}")
        return Qwen2Config(**SHAPES[key])
    if name == "tiny":
        from marft.models.tiny import build_tiny_model

        model, _ = build_tiny_model(cfg.model.tiny, corpus or [])
        return model.config
    return AutoConfig.from_pretrained(name, trust_remote_code=cfg.model.trust_remote_code)


def model_shape(cfg: Config, corpus: list[str] | None = None) -> ModelShape:
    """Parameter counts of the base and of one agent's LoRA adapter, from a meta-device model."""
    from transformers import AutoModelForCausalLM

    hf = _hf_config(cfg, corpus)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    base = sum(p.numel() for p in model.parameters())
    targets = cfg.lora.target_modules
    lora = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        if targets == "all-linear" or any(name.split(".")[-1] == t for t in targets):
            lora += cfg.lora.r * (module.in_features + module.out_features)
    for name, module in model.named_modules():  # modules_to_save: a full trainable copy per agent
        if name.split(".")[-1] in cfg.lora.modules_to_save:
            lora += sum(p.numel() for p in module.parameters())
    heads = hf.num_attention_heads
    kv_heads = getattr(hf, "num_key_value_heads", None) or heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    return ModelShape(
        base_params=base,
        lora_params=lora,
        hidden=hf.hidden_size,
        layers=hf.num_hidden_layers,
        kv_dim=kv_heads * head_dim,
        intermediate=getattr(hf, "intermediate_size", 4 * hf.hidden_size),
        vocab=hf.vocab_size,
        heads=heads,
    )


def _widest_turn(cfg: Config) -> int:
    """The most agents that act in one turn (the team graph's widest level)."""
    from marft.team.graph import TeamGraph

    return max(len(level) for level in TeamGraph.from_config(cfg.team).levels)


def plan(
    cfg: Config, shape: ModelShape, prompt_tokens: int, gpu_memory_gb: float | None = None
) -> list[DevicePlan]:
    """Per process (the learner, then each rollout worker when ``run.ray`` is set), marft's layout;
    the last entry is MARFT's reference layout for the same team (one process).

    A process's peak is what it always holds plus its largest phase: generation's KV cache, the
    scoring forward's logits, or the update's activations (phases do not overlap). On a GPU
    (``gpu_memory_gb`` given) attention is taken to be fused (no ``seq x seq`` probabilities kept);
    on CPU they are kept for the backward.
    """
    # ``auto`` as a run resolves it: a GPU plan assumes native bf16; a CPU plan asks this host.
    device = torch.device("cuda" if gpu_memory_gb else "cpu")
    native_bf16 = True if gpu_memory_gb else None
    b = resolve_dtype(cfg.model.dtype, device, cfg.model.name, native_bf16=native_bf16).itemsize
    n_agents = len(cfg.team.agents)
    trainable = sum(1 for a in cfg.team.agents if a.trainable)
    adapters = 1 if cfg.lora.shared else n_agents  # lora.shared: one adapter (all agents trainable)
    trainable = 1 if cfg.lora.shared else trainable
    action = max([a.max_new_tokens or cfg.sampling.max_new_tokens for a in cfg.team.agents])
    seq = prompt_tokens + action
    critic = resolve_algorithm(cfg.algorithm).critic
    h, kvd, inter, V = shape.hidden, shape.kv_dim, shape.intermediate, shape.vocab
    width = cfg.algorithm.value_head_hidden
    head = (h * width + 2 * width + 1) if width else h + 1  # Linear(h, w), Linear(w, 1)
    rc = cfg.run.ray
    turn = _widest_turn(cfg)

    def kv(rows: int) -> float:
        if cfg.sampling.backend == "vllm":
            if gpu_memory_gb:
                return cfg.vllm.gpu_memory_utilization * gpu_memory_gb * GIB - shape.base_params * b
            return cfg.vllm.kv_cache_gb * GIB
        return 2.0 * shape.layers * kvd * b * rows * turn * seq

    mb = cfg.algorithm.micro_batch_size
    if cfg.algorithm.micro_batch_tokens:
        mb = max(1, min(mb, cfg.algorithm.micro_batch_tokens // seq))
    # Kept for the backward through the frozen base, per token and layer: both norms' inputs and
    # outputs (4h), q, k, v and the rotated q, k (h + 2kv + h + kv), the attention output (h), the
    # MLP's gate, activation, up and their product (4 x intermediate); on CPU also the attention
    # probabilities (heads x seq).
    per_token = 7 * h + 3 * kvd + 4 * inter + (0 if gpu_memory_gb else shape.heads * seq)
    scores_ref = cfg.uses_kl() or cfg.sampling.backend != "hf" or rc.enabled or b != 4

    def phases(chunk: int, checkpointed: bool) -> tuple[float, float]:
        """(scoring, update) bytes; ``chunk``: response tokens whose logits exist at once (0: all)."""
        vocab_rows = lambda tokens: min(tokens, chunk) if chunk else tokens  # noqa: E731
        # The response logits in fp32: logits, warped, log-softmax, and the entropy's two (no grad).
        logits = 5 * 4.0 * vocab_rows(mb * (action + 1)) * V
        kept = shape.layers * h + per_token if checkpointed else shape.layers * per_token
        scoring = 3 * 4.0 * vocab_rows(cfg.env.n_envs * turn * action) * V if scores_ref else 0.0
        return scoring, mb * seq * kept * b + logits

    scoring, activations = phases(cfg.model.logit_chunk_tokens, cfg.model.gradient_checkpointing)
    # MARFT's reference code takes full-vocabulary logits of whole batches and keeps activations.
    ref_scoring, ref_activations = phases(0, False)

    learner = DevicePlan("learner")
    learner.items["base"] = shape.base_params * b
    learner.items["adapters + optimizer"] = shape.lora_params * (
        ADAM_BYTES * trainable + 4 * (adapters - trainable)
    )
    learner.items["critic"] = head * ADAM_BYTES if critic else 0.0
    if not rc.enabled:
        learner.phases["KV cache (generation)"] = kv(cfg.env.n_envs)
    learner.phases["logits (scoring)"] = scoring
    learner.phases["activations (update)"] = activations
    out = [learner]
    if rc.enabled:
        rows = math.ceil(cfg.env.n_envs / rc.rollout_workers)
        for k in range(rc.rollout_workers):
            w = DevicePlan(f"rollout worker {k}")
            w.items["base"] = shape.base_params * b
            w.items["adapters"] = shape.lora_params * 4.0 * adapters
            w.phases["KV cache (generation)"] = kv(rows)
            out.append(w)
        for g in range(1, rc.learners):
            out.append(DevicePlan(f"learner {g}", dict(learner.items), dict(learner.phases)))
    ref = DevicePlan("MARFT reference layout (one process)")
    ref.items["base copies"] = (n_agents + int(critic)) * shape.base_params * b
    for key in ("adapters + optimizer", "critic"):
        ref.items[key] = learner.items[key]
    ref.phases = {
        "KV cache (generation)": kv(cfg.env.n_envs),
        "logits (scoring)": ref_scoring,
        "activations (update)": ref_activations,
    }
    out.append(ref)
    return out


def first_env(cfg: Config):
    """One env copy of the config (what prompts and the tiny model's vocabulary are read from)."""
    from marft.compose import build_envs, resolve

    return build_envs(resolve(cfg), 1)[0]


def measure_prompt_tokens(cfg: Config, env) -> int:
    """The longest prompt of the team's first step: each agent's chat-templated prompt on ``env``
    after a reset, with every agent it observes answering at full action length."""
    from marft.compose import resolve
    from marft.team.prompts import build_messages

    graph = resolve(cfg).graph
    if cfg.model.name.startswith("shape:"):
        from marft.config import ConfigError

        raise ConfigError(
            "--prompt-tokens",
            f"{cfg.model.name} is a shape without a tokenizer, so prompts cannot be measured; "
            "give the longest prompt, e.g. --prompt-tokens 512",
        )
    if cfg.model.name == "tiny":
        from marft.models.tiny import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer(tiny_corpus_of(cfg, env) + list(cfg.model.tiny.extra_words))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            cfg.model.name, trust_remote_code=cfg.model.trust_remote_code
        )
    obs = env.reset(seed=cfg.run.seed)
    longest = 0
    for agent in graph.agents:
        words = " ".join(["word"] * (cfg.sampling.max_new_tokens))
        said = [(r, words) for r in agent.observes]
        if graph.routing is not None:  # the longest route: every earlier action of the step seen
            said = [
                (graph.agents[i % graph.n_agents].role, words) for i in range(graph.routing.max_actions - 1)
            ]
        text = tokenizer.apply_chat_template(
            build_messages(agent, obs, said, graph.message_format), add_generation_prompt=True, tokenize=False
        )
        longest = max(longest, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return longest


def tiny_corpus_of(cfg: Config, env) -> list[str] | None:
    """The built-in tiny model's corpus (its vocabulary size follows from it); None for other models."""
    if cfg.model.name != "tiny":
        return None
    from marft.compose import resolve, tiny_corpus

    return list(tiny_corpus(resolve(cfg), env))
