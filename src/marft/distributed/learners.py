"""G data-parallel learners: the driver process is learner 0, and G - 1 Ray actors join it in one
``torch.distributed`` group (gloo on CPU, NCCL on GPU).

Each iteration every learner receives the same trajectory (one object in Ray's object store) and
the driver's torch RNG state, computes the same scores and targets, and updates on its share of
every minibatch; gradients are summed across learners (:mod:`marft.learner.parallel`). The driver
keeps the only copy that is checkpointed and sent to rollout workers; the others stay identical
because they take identical steps. A learner that dies breaks the group: the driver's next
collective fails, and the trainer stops with its last checkpoint and the resume command.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import torch

from marft.config import Config
from marft.distributed.cluster import ActorProcess, cpu_adapters
from marft.learner.parallel import DataParallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_group(address: str, rank: int, world: int, device: torch.device, timeout_s: float) -> DataParallel:
    """Join the learners' ``torch.distributed`` group (NCCL on CUDA, else gloo)."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=address, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    return DataParallel(rank, world)


class LearnerWorker(ActorProcess):
    """Learner ``rank`` (>= 1), run as a Ray actor: the team model with its value head, the
    scoring phase and the learner, in the driver's group."""

    def __init__(self, cfg: Config, rank: int, world: int, threads: int) -> None:
        from marft.compose import build_envs, build_team_model, resolve
        from marft.distributed.cluster import actor_config
        from marft.runtime import configure_threads

        configure_threads(threads)
        resolved = resolve(actor_config(cfg))  # its own device: the config is resolved again here
        env = build_envs(resolved, 1)[0]
        self.model = build_team_model(resolved, env, with_critic=resolved.algorithm.critic)
        self.cfg = resolved.cfg
        self.graph = resolved.graph
        self.algorithm = resolved.algorithm
        self.rank = rank
        self.world = world

    def join(self, address: str) -> None:
        """Join the driver's group (once every learner is built, so that joining is quick)."""
        from marft.learner.learner import Learner
        from marft.learner.scoring import Scorer
        from marft.models.logprobs import SamplingParams

        cfg = self.cfg
        dp = init_group(address, self.rank, self.world, self.model.device, cfg.run.ray.learner_timeout_s)
        # Rollouts come from rollout workers: old log-probs are recomputed, as the driver does.
        needs = self.algorithm.scoring_needs(cfg.algorithm, True, cfg.uses_kl())
        sampling = SamplingParams.of(cfg.sampling)
        self.scorer = Scorer(self.model, needs, sampling, cfg.algorithm, all_roles=True)
        self.learner = Learner(cfg.algorithm, sampling, self.algorithm, self.model, self.graph, dp)

    def load(self, adapters: dict, value_head: dict | None, optimizers: dict) -> None:
        """Take the driver's adapters, value head and optimizer states (at start and on resume)."""
        self.model.set_adapter_weights(adapters)
        if value_head is not None:
            self.model.value_head.load_state_dict(value_head)
        self.learner.load_state_dict(optimizers)

    def step(self, trajectory, iteration: int, rng: torch.Tensor) -> None:
        """The driver's update, on this learner's share (the collectives pair them up)."""
        torch.set_rng_state(rng)
        scores = self.scorer.score(trajectory, self.learner.roles_to_train(iteration))
        targets = self.learner.targets(trajectory, scores)
        self.learner.fit_critic(targets)
        self.learner.update_policy(trajectory, scores, targets, iteration)

    def adapters(self) -> dict:
        return cpu_adapters(self.model.adapter_weights())


class RayLearners:
    """The G - 1 learner actors beside the driver (learner 0), and the driver's place in the group."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        import ray

        from marft.distributed.cluster import ensure_ray, placement_group_of

        rc = cfg.run.ray
        ensure_ray(rc.address)
        host = ray.util.get_node_ip_address()
        self.address = f"tcp://{host}:{_free_port()}"
        cls = ray.remote(num_cpus=rc.learner_cpus, num_gpus=rc.learner_gpus)(LearnerWorker)
        threads = max(1, int(rc.learner_cpus))
        bundle = {"CPU": rc.learner_cpus, **({"GPU": rc.learner_gpus} if rc.learner_gpus else {})}
        self._group, options = placement_group_of(bundle, rc.learners - 1, rc.placement, "learners")
        self.actors = [
            cls.options(**options(rank - 1)).remote(cfg, rank, rc.learners, threads)
            for rank in range(1, rc.learners)
        ]
        ray.get([a.pid.remote() for a in self.actors])  # built (models loaded), however long it takes
        joined = [a.join.remote(self.address) for a in self.actors]
        self.dp = init_group(self.address, 0, rc.learners, device, rc.learner_timeout_s)
        ray.get(joined)
        self._pending: list[Any] = []

    def sync_from(self, model, learner) -> None:
        """Give every learner the driver's adapters, value head and optimizer states."""
        import ray

        adapters = cpu_adapters(model.adapter_weights())
        head = model.value_head.state_dict() if model.value_head is not None else None
        ray.get([a.load.remote(adapters, head, learner.state_dict()) for a in self.actors])

    def start(self, trajectory, iteration: int) -> None:
        """Start the other learners' update of this iteration (before the driver's own)."""
        import ray

        ref = ray.put(trajectory.to("cpu"))
        rng = torch.get_rng_state()
        self._pending = [a.step.remote(ref, iteration, rng) for a in self.actors]

    def finish(self) -> None:
        """Wait for the other learners (raises if one failed)."""
        import ray

        pending, self._pending = self._pending, []
        ray.get(pending)

    def adapters(self, rank: int) -> dict:
        import ray

        return ray.get(self.actors[rank - 1].adapters.remote())

    def peak_rss_mb(self) -> list[float]:
        import ray

        return ray.get([a.peak_rss_mb.remote() for a in self.actors])

    def pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def shutdown(self) -> None:
        import ray
        import torch.distributed as dist

        for a in self.actors:
            ray.kill(a)
        ray.util.remove_placement_group(self._group)
        if dist.is_initialized():
            dist.destroy_process_group()
