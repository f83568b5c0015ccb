"""The builders of a run: env copies, the team model, judges, the generation backend, the collector,
and a training run's parts. Each takes the run's :class:`~marft.compose.resolution.Resolved` (made
once by :func:`marft.compose.resolve`) instead of deriving the graph, the algorithm or the device
again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from marft.compose.capabilities import check_backend, check_env_copy, env_capabilities
from marft.compose.resolution import Resolved
from marft.config import Config, JudgeConfig, ModelConfig, from_dict
from marft.envs.base import Env
from marft.envs.capabilities import EnvCapabilities, JudgeableEnv, TeamAwareEnv, VocabularyEnv
from marft.envs.copies import EnvCopies
from marft.learner.learner import Learner
from marft.learner.parallel import SINGLE, DataParallel
from marft.learner.scoring import Scorer
from marft.learner.spec import ResolvedAlgorithm
from marft.models.bases import TeamBases
from marft.models.judge import Judge
from marft.models.loading import load_base, resolve_device, resolve_dtype
from marft.models.logprobs import SamplingParams
from marft.models.team_model import TeamModel
from marft.rollout.backends import GenerationBackend, WeightSync
from marft.rollout.collector import Collector
from marft.rollout.generators import BaseGeneration, Generators
from marft.rollout.sampler import RemoteSampler, Sampler
from marft.team.graph import TeamGraph


def _make_env(caps: EnvCapabilities, kwargs: Mapping[str, Any] | None, team: TeamGraph | None) -> Env:
    """One copy of ``caps``'s class: ``Class(Config(**kwargs))`` or ``Class(**kwargs)``, then
    ``bind_team(team)`` when the class is a :class:`~marft.envs.capabilities.TeamAwareEnv`."""
    kwargs = dict(kwargs or {})
    if caps.config_class is not None:
        env = caps.cls(from_dict(caps.config_class, kwargs, "env.kwargs"))
    else:
        env = caps.cls(**kwargs)
    if team is not None and caps.team_aware:
        cast(TeamAwareEnv, env).bind_team(team)
    return env


def make_env(name: str, kwargs: Mapping[str, Any] | None = None, team: TeamGraph | None = None) -> Env:
    """Build one env copy by registered name or ``module:Class``; ``kwargs`` are checked first
    (for scripts and tests; a run builds its copies with :func:`build_envs`).

    Args:
        name: registered name or ``module:Class``.
        kwargs: ``env.kwargs``.
        team: the team's :class:`~marft.team.TeamGraph`, given to a
            :class:`~marft.envs.capabilities.TeamAwareEnv` (one that grades some agents, say).

    Raises:
        ConfigError: an unknown env, or arguments its ``Config`` refuses.
    """
    return _make_env(env_capabilities(name), kwargs, team)


def build_envs(resolved: Resolved, n: int) -> EnvCopies:
    """``n`` env copies of the run (data problems surface here, before any model loads).

    Raises:
        ConfigError: the env's data cannot be read, or a copy lacks an attribute of a protocol its
            class keeps (an evaluable env's ``problems``).
    """
    cfg = resolved.cfg
    envs = [_make_env(resolved.env, cfg.env.kwargs, resolved.graph) for _ in range(n)]
    if envs:
        check_env_copy(envs[0], resolved.env)
    return EnvCopies(envs, resolved.env)


def tiny_corpus(resolved: Resolved, env: Env) -> list[str]:
    """Text the built-in tiny tokenizer must cover: prompts, roles, and the env's own words (a
    :class:`~marft.envs.capabilities.VocabularyEnv`'s, and a judged env's judge prompts)."""
    cfg = resolved.cfg
    corpus = [a.system_prompt for a in cfg.team.agents] + [a.role for a in cfg.team.agents]
    corpus.append(cfg.team.message_format.replace("{role}", " ").replace("{content}", " "))
    if resolved.env.vocabulary:
        corpus.extend(cast(VocabularyEnv, env).vocabulary())
    if resolved.env.judgeable:  # the judge's prompts are read by the same tiny model
        for judge in (cfg.reward.judge, cfg.reward.heldout_judge):
            if judge is not None:
                corpus += [judge.system_prompt, judge.template, judge.pairwise_template, judge.answer_prefix]
                corpus.append(judge.pairwise_answer_prefix)
    return corpus


def build_base(
    resolved: Resolved, env: Env, device: torch.device | None = None, spec: ModelConfig | None = None
):
    """``(base model, tokenizer, dtype)``: the base ``spec`` (default ``model``, the first base) in
    its dtype on its device, or on ``device`` when given (the tiny model is built from ``env``'s
    words)."""
    spec = spec or resolved.cfg.model
    where = device if device is not None else resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, where, spec.name)
    base, tokenizer = load_base(spec, corpus=tiny_corpus(resolved, env), dtype=dtype)
    return base, tokenizer, dtype


def build_team_model(resolved: Resolved, env: Env, with_critic: bool) -> TeamModel | TeamBases:
    """One frozen base with an adapter per agent (and a value head when ``with_critic``); for a
    team of several bases (``models``), each base loaded once with the adapters of the agents on
    it (:class:`~marft.models.bases.TeamBases`)."""
    cfg = resolved.cfg
    base_of = cfg.base_of()
    used = [name for name in cfg.bases() if name in base_of.values()]
    models = {}
    for name in used:
        spec = cfg.bases()[name]
        base, tokenizer, dtype = build_base(resolved, env, spec=spec)
        models[name] = TeamModel(
            base,
            tokenizer,
            [r for r in resolved.graph.roles if base_of[r] == name],
            cfg.lora,
            value_head_width=cfg.algorithm.value_head_hidden,
            dtype=dtype,
            device=resolve_device(spec.device),
            with_critic=with_critic and (len(used) == 1 or name == cfg.critic_base()),
            logit_chunk_tokens=spec.logit_chunk_tokens,
            gradient_checkpointing=spec.gradient_checkpointing,
        )
    if len(models) == 1:
        return next(iter(models.values()))
    return TeamBases(models, resolved.graph.roles, critic_base=cfg.critic_base() if with_critic else None)


def build_judge(
    cfg: Config, judge: JudgeConfig, model: TeamModel, loaded: dict | None = None, prefix: str = "judge"
) -> Judge:
    """A :class:`~marft.models.judge.Judge`: the team's base with adapters disabled
    (``judge.model: null``), or another model loaded frozen in ``model.dtype`` (``loaded`` keeps
    models already loaded by name, so a judge and a held-out judge share one)."""
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


def bind_judges(resolved: Resolved, envs: Sequence[Env], model: TeamModel) -> Judge | None:
    """Envs scored by a judge model (:class:`~marft.envs.capabilities.JudgeableEnv`: ``judged``)
    get ``reward.judge`` and ``reward.heldout_judge``, built once and shared by every copy; returns
    the judge (None for other envs, which are left alone)."""
    if not envs or not resolved.env.judgeable:
        return None
    cfg = resolved.cfg
    loaded: dict = {}
    judge = build_judge(cfg, cfg.reward.judge, model, loaded)
    held = cfg.reward.heldout_judge
    heldout = build_judge(cfg, held, model, loaded, "heldout_judge") if held is not None else None
    for i, env in enumerate(envs):
        cast(JudgeableEnv, env).bind_judge(judge, heldout, owner=i == 0)
    return judge


def build_backend(resolved: Resolved, model: TeamModel, env: Env) -> GenerationBackend:
    """The generation backend of ``sampling.backend``. An engine that loads the base from a
    folder (vLLM) gets ``model.name``, or for the built-in tiny model a folder it is saved to
    (rebuilt from ``env``'s words and its seed: identical)."""
    cfg = resolved.cfg
    folder = None
    if resolved.backend.needs_model_folder and cfg.model.name == "tiny":
        import tempfile

        base, tokenizer, _ = build_base(resolved, env, torch.device("cpu"))
        folder = tempfile.mkdtemp(prefix="marft-tiny-")
        base.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    backend = resolved.backend.from_config(model, cfg, model_folder=folder)
    return check_backend(backend, cfg.sampling.backend)


def build_generators(resolved: Resolved, model: TeamModel | TeamBases, env: Env) -> Generators:
    """Each base's tokenizer and generation backend (:func:`build_backend` per base)."""
    if isinstance(model, TeamModel):
        return Generators.single(model.tokenizer, build_backend(resolved, model, env), model.roles)
    per_base = {
        name: BaseGeneration(m.tokenizer, build_backend(resolved, m, env)) for name, m in model.models.items()
    }
    return Generators(per_base, model.base_of)


def build_collector(
    resolved: Resolved,
    envs: EnvCopies,
    tokenizer,
    backend: GenerationBackend,
    env_offset: int = 0,
    generators: Generators | None = None,
) -> Collector:
    """The collector of a training run over ``envs`` (a rollout worker's slice starts at
    ``env_offset``); a team of several bases generates with ``generators``."""
    cfg = resolved.cfg
    several_bases = len(set(cfg.base_of().values())) > 1
    return Collector(
        envs,
        resolved.graph,
        tokenizer,
        backend,
        cfg.env,
        cfg.sampling,
        seed=cfg.run.seed,
        episodic=resolved.algorithm.episodic,
        group_size=cfg.algorithm.group_size,
        transcripts_per_iter=cfg.run.transcripts_per_iter,
        env_offset=env_offset,
        branching=tuple(cfg.algorithm.branching) if cfg.algorithm.group_baseline == "nested" else (),
        generators=generators,
        critic_base=cfg.critic_base() if resolved.algorithm.critic and several_bases else None,
    )


@dataclass
class TrainingParts:
    """Everything a training run is built from.

    Attributes:
        resolved: the run's resolved config.
        envs: this process's env copies (with rollout workers, each worker builds its own).
        model: the learner's team model.
        sampler: collects each iteration's trajectory: the in-process
            :class:`~marft.rollout.collector.Collector`, or the Ray rollout workers.
        backend: receives the new adapters after each update (the local generation backend, or
            the Ray rollout workers).
        scorer: the scoring phase.
        learner: the advantages, critic and policy phases.
    """

    resolved: Resolved
    envs: EnvCopies
    model: TeamModel
    sampler: Sampler
    backend: WeightSync
    scorer: Scorer
    learner: Learner

    @property
    def graph(self) -> TeamGraph:
        """The team graph (``resolved.graph``)."""
        return self.resolved.graph

    @property
    def algorithm(self) -> ResolvedAlgorithm:
        """The resolved algorithm (``resolved.algorithm``)."""
        return self.resolved.algorithm


def build_training(
    resolved: Resolved,
    envs: EnvCopies | None = None,
    remote_sampler: Callable[[TeamModel, int], RemoteSampler] | None = None,
    dp: DataParallel = SINGLE,
) -> TrainingParts:
    """Build a training run's parts (``envs`` if already built).

    Args:
        resolved: the run's resolved config (:func:`marft.compose.resolve`).
        envs: the run's env copies (None: built here).
        remote_sampler: ``(model, group size) -> sampler`` that collects elsewhere (Ray rollout
            workers): it is both the sampler and what receives the weights, in place of the local
            backend and collector.
        dp: this process's place among data-parallel learners.
    """
    cfg = resolved.cfg
    algorithm = resolved.algorithm
    envs = envs if envs is not None else build_envs(resolved, cfg.env.n_envs)
    model = build_team_model(resolved, envs[0], with_critic=algorithm.critic)
    sampler: Sampler
    backend: WeightSync
    if remote_sampler is not None:  # the rollout workers judge their own env copies
        remote = remote_sampler(model, cfg.algorithm.group_size if algorithm.episodic else 1)
        sampler = remote
        backend = remote
    else:
        first = model.members[0]  # the judge's base, when it is the team's (reward.judge.model null)
        bind_judges(resolved, envs, first)
        gens = build_generators(resolved, model, envs[0])
        local = gens.per_base[gens.bases[0]].backend
        several = len(gens.bases) > 1
        sampler = build_collector(
            resolved, envs, first.tokenizer, local, generators=gens if several else None
        )
        backend = gens if several else local
    # The learner recomputes old log-probs when the sampler's forward is not its own: a half-
    # precision base rounds differently, and a separate engine (vLLM, a rollout worker) has its own.
    half = any(next(p.dtype for _, p in m.base_parameters()) != torch.float32 for m in model.members)
    needs = algorithm.scoring_needs(cfg.algorithm, half or not backend.shares_weights, cfg.uses_kl())
    sampling = SamplingParams.of(cfg.sampling)
    scorer = Scorer(model, needs, sampling, cfg.algorithm, all_roles=not backend.shares_weights)
    learner = Learner(cfg.algorithm, sampling, algorithm, model, resolved.graph, dp)
    return TrainingParts(resolved, envs, model, sampler, backend, scorer, learner)
