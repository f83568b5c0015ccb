"""Which rollout workers a Ray run gets: synchronous, or with collections in flight while the
learner trains (``run.ray.async``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marft.config import Config
from marft.distributed.async_rollout import AsyncRayRollout
from marft.distributed.rollout import RayRollout


def ray_sampler(cfg: Config) -> Callable[[Any, int], RayRollout]:
    """Under ``run.ray``: a factory of Ray rollout workers for ``build_training`` (they replace the
    local collector); called with the team model and the group size."""

    def make(model, group_size: int) -> RayRollout:
        pad_id = model.tokenizer.pad_token_id
        if cfg.run.ray.async_.enabled:
            return AsyncRayRollout(cfg, model.adapter_weights, pad_id, group_size, model.adapter_of)
        return RayRollout(cfg, model.adapter_weights, pad_id, group_size)

    return make
