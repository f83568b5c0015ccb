"""Connecting to Ray and placing workers: a local instance or a running cluster, and one
placement group that packs or spreads the rollout workers' resources."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from marft.config import Config
from marft.config.scale import RayConfig

RAY_MISSING = (
    "run.ray needs Ray: pip install 'marft[ray]' (or pip install ray), or remove run.ray.address "
    "to run in one process"
)


class ActorProcess:
    """What every marft Ray actor answers about its own process."""

    def pid(self) -> int:
        return os.getpid()

    def peak_rss_mb(self) -> float:
        """This process's peak resident memory (what ``benchmarks/scaling.py`` reports)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_adapters(weights: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Adapter tensors by role, on the CPU: what is put into Ray's object store."""
    return {role: {name: t.cpu() for name, t in tensors.items()} for role, tensors in weights.items()}


def actor_config(cfg: Config) -> Config:
    """The config an actor builds from: its model on whatever device Ray gave it. Ray sets each
    actor's ``CUDA_VISIBLE_DEVICES`` (empty without ``*_gpus``), so the driver's ``model.device``
    (``cuda:7``, say) would name a device the actor does not see; ``auto`` takes its own."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device="auto"))


def ensure_ray(address: str) -> None:
    """Join the cluster at ``address`` (``local``: start one on this machine) unless already joined."""
    import ray

    if ray.is_initialized():
        return
    # Workers inherit our threads policy; Ray's own dashboard and usage report are not needed.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
    if address == "local":
        ray.init(address="local", **kwargs)  # always a new instance, never another run's
    else:
        ray.init(address=address, **kwargs)


def placement_options(rc: RayConfig) -> tuple[Any, Callable[[int], dict[str, Any]]]:
    """The rollout workers' placement group (``run.ray.placement``; one bundle of
    ``worker_cpus``/``worker_gpus`` each) and ``k -> .options(...)`` of worker k."""
    bundle = {"CPU": rc.worker_cpus, **({"GPU": rc.worker_gpus} if rc.worker_gpus else {})}
    return placement_group_of(bundle, rc.rollout_workers, rc.placement, "rollout workers")


def placement_group_of(
    bundle: dict[str, float], n: int, placement: str, what: str
) -> tuple[Any, Callable[[int], dict[str, Any]]]:
    """``(placement group, k -> Ray .options(...) of actor k)``: one group of ``n`` bundles,
    packed onto few nodes or spread over many; actor k gets bundle k. Remove the group when the
    actors are done.

    Raises:
        RuntimeError: the cluster cannot hold them (within two minutes), with what it has.
    """
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([dict(bundle) for _ in range(n)], strategy=placement.upper())
    ready, _ = ray.wait([pg.ready()], timeout=120)
    if not ready:
        ray.util.remove_placement_group(pg)
        have = ray.available_resources()
        raise RuntimeError(
            f"Ray cannot place {n} {what} of {bundle} each (available: "
            f"{ {k: v for k, v in have.items() if k in ('CPU', 'GPU')} }); lower run.ray's counts or "
            "their worker_/learner_ cpus and gpus"
        )

    def options(k: int) -> dict[str, Any]:
        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=k
            )
        }

    return pg, options
