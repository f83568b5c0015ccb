"""Models: one frozen base, a LoRA adapter per agent, a value head, log-prob helpers."""

from marft.models.adapters import SHARED_ADAPTER, TeamAdapters
from marft.models.loading import ModelLoadError, load_base, resolve_device, resolve_dtype
from marft.models.logprobs import SamplingParams, chunked_token_logprobs, entropy_of, warp_logits
from marft.models.sequences import SequenceBatch, position_ids_from_mask
from marft.models.team_model import TeamModel
from marft.models.value_head import ValueHead

__all__ = [
    "SHARED_ADAPTER",
    "ModelLoadError",
    "SamplingParams",
    "SequenceBatch",
    "TeamAdapters",
    "TeamModel",
    "ValueHead",
    "load_base",
    "chunked_token_logprobs",
    "entropy_of",
    "position_ids_from_mask",
    "resolve_device",
    "resolve_dtype",
    "warp_logits",
]
