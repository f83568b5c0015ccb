"""Correcting for a sampler that is not the learner (pure functions).

A separate inference engine (vLLM) samples with its own kernels, so the log-probs it reports
differ slightly from the learner's for the same weights. Truncated importance sampling (TIS; Yao
et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training") weights the
policy gradient by ``min(pi_learner / pi_sampler, cap)``.
"""

from __future__ import annotations

from torch import Tensor


def truncated_importance_weights(
    learner_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float, per_token: bool
) -> Tensor:
    """TIS weights of sampled actions.

    Args:
        learner_logprobs: ``[S, L]`` log-probs of the sampled tokens under the learner (old policy).
        sampler_logprobs: ``[S, L]`` the same under the sampler's distribution.
        mask: ``[S, L]`` 1 on real tokens.
        cap: upper bound of a weight (>= 1).
        per_token: ``[S, L]`` weights per token (0 on padding); else ``[S]`` per action, from the
            summed log-probs.

    Returns:
        ``min(exp(learner - sampler), cap)`` per token or per action.
    """
    log_ratio = (learner_logprobs - sampler_logprobs) * mask
    if per_token:
        return log_ratio.exp().clamp(max=cap) * mask
    return log_ratio.sum(-1).exp().clamp(max=cap)
