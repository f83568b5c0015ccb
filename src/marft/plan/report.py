"""What ``marft plan`` prints: each process's memory as a table, what fits on the GPUs, and for a
team of several bases the plan of each base (:func:`plan_text`); the arithmetic is
:mod:`marft.plan.memory`."""

from __future__ import annotations

import dataclasses

from marft.config import Config
from marft.learner.spec import resolve_algorithm
from marft.plan.memory import (
    GIB,
    DevicePlan,
    ModelShape,
    first_env,
    measure_prompt_tokens,
    model_shape,
    plan,
    tiny_corpus_of,
)


def _size(n: float) -> str:
    return f"{n / GIB:10.2f} GiB" if n >= GIB else f"{n / 2**20:10.1f} MiB"


def format_plan(plans: list[DevicePlan], shape: ModelShape, gpu_memory_gb: float | None = None) -> str:
    """A table per process, GiB, with what fits on a device of ``gpu_memory_gb``."""
    lines = [
        f"base: {shape.base_params / 1e6:,.1f} M parameters; "
        f"one agent's adapter: {shape.lora_params / 1e6:.3f} M",
    ]
    for p in plans:
        lines.append(f"\n{p.name}")
        for k, v in p.items.items():
            lines.append(f"  {k:<24} {_size(v)}")
        for k, v in p.phases.items():
            lines.append(f"  {k:<24} {_size(v)}  (while it runs)")
        fits = ""
        if gpu_memory_gb:
            fits = "  fits" if p.total <= gpu_memory_gb * GIB else f"  does NOT fit in {gpu_memory_gb:g} GiB"
        lines.append(f"  {'peak':<26} {_size(p.total)}{fits}")
    return "\n".join(lines)


def per_gpu(plans: list[DevicePlan], cfg: Config, gpus: int) -> list[float]:
    """Bytes per GPU: learner g on GPU g, then rollout workers on the GPUs after the learners
    (``1 / run.ray.worker_gpus`` workers each), wrapping around when there are too few GPUs."""
    totals = [0.0] * gpus
    learners = [p for p in plans[:-1] if p.name.startswith("learner")]
    workers = [p for p in plans[:-1] if p.name.startswith("rollout")]
    for g, p in enumerate(learners):
        totals[g % gpus] += p.total
    per = max(1, int(1 / cfg.run.ray.worker_gpus)) if cfg.run.ray.worker_gpus else max(1, len(workers))
    first = len(learners) % gpus
    free = gpus - first if first else gpus
    for k, w in enumerate(workers):
        totals[(first + (k // per) % free) % gpus] += w.total
    return totals


def base_config(cfg: Config, name: str) -> Config:
    """The part of a team of several bases that sits on base ``name``: that base as ``model`` and
    its agents, each seeing only the env (so all of them count as one turn: an upper bound). Not
    a runnable config (the env may name agents of other bases): it is only planned. The critic's
    value head is counted on the critic's base only."""
    mine = [a for a in cfg.team.agents if cfg.base_of()[a.role] == name]
    agents = [dataclasses.replace(a, base=None, observes=[]) for a in mine]
    team = dataclasses.replace(cfg.team, agents=agents, routing=None)
    algorithm = dataclasses.replace(cfg.algorithm, critic_base=None)
    if name != cfg.critic_base() and resolve_algorithm(algorithm).critic:
        # the value head sits on the critic's base only; planned here as a critic-free algorithm
        algorithm = dataclasses.replace(algorithm, name="grpo")
    return dataclasses.replace(cfg, model=cfg.bases()[name], models={}, team=team, algorithm=algorithm)


def plan_text(
    cfg: Config, gpus: int | None = None, gpu_memory_gb: float | None = None, prompt_tokens: int | None = None
) -> str:
    """What ``marft plan`` prints: the shapes, then each process's memory and the reference layout;
    for a team of several bases, that for each base with its agents' adapters (prompt tokens
    measured with the first base's tokenizer)."""
    env = first_env(cfg)
    if prompt_tokens is None:
        prompt_tokens = measure_prompt_tokens(cfg, env)
    used = list(dict.fromkeys(cfg.base_of().values()))
    if len(used) == 1:
        return _plan_text(cfg, tiny_corpus_of(cfg, env), prompt_tokens, gpus, gpu_memory_gb)[0]
    from marft.compose import resolve, tiny_corpus

    corpus = list(tiny_corpus(resolve(cfg), env))
    parts = []
    learners = []
    for name in used:
        roles = ", ".join(r for r, b in cfg.base_of().items() if b == name)
        sub = base_config(cfg, name)
        own = corpus if sub.model.name == "tiny" else None
        text, plans = _plan_text(sub, own, prompt_tokens, gpus, gpu_memory_gb)
        parts.append(f"base {name} ({roles}):\n" + text)
        learners.append(plans[0])
    together = team_learner(learners)
    fits = ""
    if gpu_memory_gb:
        fits = "  fits" if together <= gpu_memory_gb * GIB else f"  does NOT fit in {gpu_memory_gb:g} GiB"
    parts.append(
        f"every base in one learner process (their phases run one base at a time): {_size(together)}{fits}"
    )
    return "\n\n".join(parts)


def team_learner(learners: list[DevicePlan]) -> float:
    """Bytes of one learner that holds several bases: what each always holds, plus the largest
    phase of any (generation, scoring and the update run one base at a time)."""
    held = sum(sum(p.items.values()) for p in learners)
    return held + max((max(p.phases.values(), default=0.0) for p in learners), default=0.0)


def _plan_text(
    cfg: Config, corpus: list[str] | None, prompt_tokens: int, gpus: int | None, gpu_memory_gb: float | None
) -> tuple[str, list[DevicePlan]]:
    """:func:`plan_text` of a team of one base, and its plans (the learner's first)."""
    shape = model_shape(cfg, corpus)
    plans = plan(cfg, shape, prompt_tokens, gpu_memory_gb)
    head = f"prompt tokens: {prompt_tokens}; action tokens: up to {cfg.sampling.max_new_tokens}"
    text = head + "\n" + format_plan(plans, shape, gpu_memory_gb)
    if gpus:
        text += f"\n\nper GPU ({gpus}; learners first, then rollout workers):"
        for i, total in enumerate(per_gpu(plans, cfg, gpus)):
            fits = ""
            if gpu_memory_gb:
                fits = (
                    "  fits" if total <= gpu_memory_gb * GIB else f"  does NOT fit in {gpu_memory_gb:g} GiB"
                )
            text += f"\n  GPU {i}: {_size(total)}{fits}"
    return text, plans
