"""The checks of a config that span sections or need the registries: the algorithm, its estimator
and policy loss, the backend's own limits, Ray's workers, the env's arguments and the team.

:func:`marft.compose.resolve` runs them once per config, after it has looked up the env class and
the backend class (what those can do is decided there, not here).
"""

from __future__ import annotations

import importlib.util

from marft.algorithms import ADVANTAGE_ESTIMATORS, POLICY_LOSSES
from marft.config import Config, ConfigError, from_dict
from marft.envs.capabilities import EnvCapabilities
from marft.learner.spec import ALGORITHMS, ResolvedAlgorithm, resolve_algorithm
from marft.registry import Registry
from marft.rollout.backends import BackendFactory
from marft.team.graph import TeamGraph


def check_choice(registry: Registry, name: str, key: str, what: str) -> None:
    """``name`` is registered in ``registry``, else a config error listing the choices."""
    if name not in registry:
        raise ConfigError(key, f"unknown {what} {name!r}; choose one of: {', '.join(registry.names())}")


def check_config(cfg: Config, env: EnvCapabilities, backend: BackendFactory) -> ResolvedAlgorithm:
    """Every cross-section check of ``cfg``, given its env class's capabilities and its backend
    class; returns the algorithm it resolved on the way.

    Raises:
        ConfigError: naming the key and what is allowed.
    """
    algorithm = check_algorithm(cfg)
    backend.check_config(cfg)
    if cfg.run.ray.enabled:
        check_ray(cfg, group=cfg.algorithm.group_size if algorithm.estimator.grouped else 1)
    if cfg.run.ray.async_.enabled:
        check_async(cfg)
    check_env_arguments(cfg, env)
    check_team(cfg)
    if len(cfg.bases()) > 1:
        check_bases(cfg, algorithm)
    if cfg.algorithm.group_baseline != "episode":
        check_group_baseline(cfg, algorithm.estimator.grouped)
    return algorithm


def check_algorithm(cfg: Config) -> ResolvedAlgorithm:
    """The algorithm, its policy loss and advantage estimator, and what group-relative estimators
    ask of ``env.n_envs``; returns the resolved algorithm."""
    alg = cfg.algorithm
    check_choice(ALGORITHMS, alg.name, "algorithm.name", "algorithm")
    check_choice(POLICY_LOSSES, alg.policy_loss, "algorithm.policy_loss", "policy loss")
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
    algorithm = resolve_algorithm(alg)  # algorithm.loss_agg_mode fits the estimator's advantages
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
    return algorithm


def check_ray(cfg: Config, group: int) -> None:
    """Ray must be installed, and every rollout worker needs at least one env copy (one group)."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "run.ray.address",
            "Ray is not installed: pip install 'marft[ray]', or set run.ray.address=null to run in one "
            "process",
        )
    K = cfg.run.ray.rollout_workers
    groups = cfg.env.n_envs // group
    if groups < K:
        what = f"{groups} groups of {group}" if group > 1 else f"{groups} env copies"
        raise ConfigError(
            "run.ray.rollout_workers",
            f"{K} workers for {what} (env.n_envs={cfg.env.n_envs}): each worker needs at least one; "
            f"lower it to at most {groups} or raise env.n_envs",
        )


def check_async(cfg: Config) -> None:
    """Asynchronous rollouts (``run.ray.async.max_staleness`` >= 1) run on Ray rollout workers and
    need the off-policy correction."""
    key = "run.ray.async.max_staleness"
    if not cfg.run.ray.enabled:
        raise ConfigError(
            key,
            "asynchronous rollouts run on Ray rollout workers: set run.ray.address (local, or a "
            "cluster's address), or set it to 0",
        )
    if cfg.algorithm.rollout_correction != "tis":
        raise ConfigError(
            key,
            "a trajectory sampled with older adapters needs the decoupled-PPO correction: set "
            "algorithm.rollout_correction=tis (the truncated importance ratio to the sampler's "
            "log-probs), or set it to 0",
        )


def check_env_arguments(cfg: Config, env: EnvCapabilities) -> None:
    """``env.kwargs`` against the env's ``Config`` dataclass, then its ``check_team`` and
    ``check_reward`` hooks (:class:`~marft.envs.capabilities.TeamCheckedConfig`,
    :class:`~marft.envs.capabilities.RewardCheckedConfig`)."""
    if env.config_class is None:
        return
    env_kwargs = from_dict(env.config_class, cfg.env.kwargs, "env.kwargs")
    problem = env.team_check(env_kwargs, cfg.team) if env.team_check is not None else None
    if not problem and env.reward_check is not None:  # envs scored by a judge model
        problem = env.reward_check(env_kwargs, cfg.reward)
    if problem:
        raise ConfigError(problem[0], problem[1])


def check_team(cfg: Config) -> None:
    """Some agent trains, and a shared adapter is not asked to keep some agents frozen."""
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
    for key in ("lr", "kl_coef"):
        own = {a.role: getattr(a, key) for a in cfg.team.agents if getattr(a, key) is not None}
        if cfg.lora.shared and own and (len(own) < len(cfg.team.agents) or len(set(own.values())) > 1):
            raise ConfigError(
                f"team.agents.*.{key}",
                f"one shared adapter has one {key}, but the agents set {own}; set lora.shared=false "
                f"(an adapter per agent) or give every agent the same {key}",
            )


def check_group_baseline(cfg: Config, grouped: bool) -> None:
    """``algorithm.group_baseline`` fits the algorithm and, for nested groups, the team."""
    alg = cfg.algorithm
    if not grouped:
        raise ConfigError(
            "algorithm.group_baseline",
            f"only group-relative algorithms form group baselines; {alg.name} uses GAE (set it to episode)",
        )
    if alg.group_baseline != "nested":
        return
    graph = TeamGraph.from_config(cfg.team)
    if graph.routing is not None:
        raise ConfigError("algorithm.group_baseline", "nested groups need a static graph, not team.routing")
    depths = len(graph.levels)
    if len(alg.branching) != depths:
        raise ConfigError(
            "algorithm.branching",
            f"give one branching factor per depth of the team's graph ({depths}), got {alg.branching}",
        )
    if cfg.env.horizon != 1:
        raise ConfigError(
            "env.horizon",
            f"nested groups branch an episode's single step; set env.horizon=1 (got {cfg.env.horizon})",
        )
    if cfg.env.reward_assignment == "per_agent":
        raise ConfigError(
            "env.reward_assignment", "nested groups credit the team's return; use 'last' or 'shared'"
        )


def check_bases(cfg: Config, algorithm: ResolvedAlgorithm) -> None:
    """A team of several bases (``models``): what it runs with today, each refusal saying what to
    do instead."""
    used = set(cfg.base_of().values())
    if len(used) < 2:
        return
    if cfg.lora.shared:
        raise ConfigError(
            "lora.shared", "one adapter cannot sit on several bases: put the agents on one base, or set false"
        )
    if algorithm.critic and algorithm.estimator.values == "token":
        raise ConfigError(
            "algorithm.name",
            f"{algorithm.name}'s critic values each token of an action, and the tokens of an agent on "
            "another base than the critic's are not the critic base's; use appo (a value per action) "
            "or a group-relative algorithm (grpo, dr_grpo, rloo, reinforce_pp)",
        )
    if algorithm.critic and cfg.critic_base() not in used:
        raise ConfigError(
            "algorithm.critic_base",
            f"the critic sits on a base that some agent runs on ({', '.join(sorted(used))}); "
            f"no agent is on {cfg.critic_base()!r}",
        )
    if cfg.sampling.backend != "hf":
        raise ConfigError("sampling.backend", "a team of several bases samples with hf only (for now)")
    if cfg.run.ray.enabled:
        raise ConfigError("run.ray.enabled", "a team of several bases runs in one process only (for now)")
    if cfg.algorithm.policy_step != "per_adapter":
        raise ConfigError(
            "algorithm.policy_step", "a team of several bases updates its adapters one at a time: per_adapter"
        )
