"""Models: one frozen base, a LoRA adapter per agent, a value head, log-prob helpers."""

from marft.models.loading import ModelLoadError, load_base, resolve_device, resolve_dtype
from marft.models.logprobs import chunked_token_logprobs, entropy_of, warp_logits
from marft.models.team_model import SequenceBatch, TeamModel, ValueHead

__all__ = [
    "ModelLoadError",
    "SequenceBatch",
    "TeamModel",
    "ValueHead",
    "load_base",
    "chunked_token_logprobs",
    "entropy_of",
    "resolve_device",
    "resolve_dtype",
    "warp_logits",
]
