"""Models: one frozen base, a LoRA adapter per agent, a value head, log-prob helpers."""

from marft.models.logprobs import logprobs_and_entropy, warp_logits
from marft.models.team_model import (
    ModelLoadError,
    SequenceBatch,
    TeamModel,
    ValueHead,
    load_base,
    resolve_device,
    resolve_dtype,
)

__all__ = [
    "ModelLoadError",
    "SequenceBatch",
    "TeamModel",
    "ValueHead",
    "load_base",
    "logprobs_and_entropy",
    "resolve_device",
    "resolve_dtype",
    "warp_logits",
]
