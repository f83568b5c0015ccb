"""Token sequences the team model scores: prompts with their sampled responses.

A :class:`SequenceBatch` is what the learner and the scoring phase hand to the model: left-padded
prompts and right-padded responses of ``S`` actions. :func:`response_states` runs a decoder over
them once and keeps the final hidden state before each response token, from which log-probs
(:func:`~marft.models.logprobs.chunked_token_logprobs`) and per-token critic features are taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class SequenceBatch:
    """Prompt + response token ids of ``S`` actions.

    Attributes:
        prompt_ids: ``[S, P]`` left-padded prompt tokens.
        prompt_mask: ``[S, P]`` 1 on real prompt tokens.
        response_ids: ``[S, L]`` right-padded action tokens.
        response_mask: ``[S, L]`` 1 on real action tokens.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor

    def take(self, idx: Tensor) -> SequenceBatch:
        """Rows ``idx`` (``[m]`` indices), every column kept."""
        return SequenceBatch(
            self.prompt_ids[idx], self.prompt_mask[idx], self.response_ids[idx], self.response_mask[idx]
        )

    def trimmed(self) -> SequenceBatch:
        """Drop padding columns that every row has (leading for prompts, trailing for responses)."""
        p_keep = self.prompt_mask.any(0).nonzero()
        r_keep = self.response_mask.any(0).nonzero()
        p0 = int(p_keep[0]) if len(p_keep) else self.prompt_mask.shape[1]
        r1 = int(r_keep[-1]) + 1 if len(r_keep) else 1
        return SequenceBatch(
            self.prompt_ids[:, p0:],
            self.prompt_mask[:, p0:],
            self.response_ids[:, :r1],
            self.response_mask[:, :r1],
        )


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Positions that ignore left padding: ``cumsum(mask) - 1``, clamped at 0 (``[S, N] -> [S, N]``)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def response_states(decoder: nn.Module, batch: SequenceBatch) -> Tensor:
    """The final hidden state before each response token: ``[S, L, H]``.

    One forward of ``decoder`` (a Hugging Face decoder stack, e.g. ``base.get_decoder()``) over
    prompts and responses; a LoRA adapter that is active applies, since its layers live inside
    the base's modules. No KV cache: it would keep every layer's keys and values alive to the end
    of the forward.

    Args:
        decoder: the decoder stack (no output layer).
        batch: prompts ``[S, P]`` and responses ``[S, L]``.
    """
    P, L = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    out = decoder(
        input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
    )
    return out.last_hidden_state[:, P - 1 : P + L - 1]
