"""What each of the learner's phases reports, as typed values; ``metrics()`` gives a phase's columns
of the metrics row (names and values as the rows have always had them).

* :class:`ScoreStats`: the scoring phase (the sampler's and the learner's log-prob gap);
* :class:`AdvantageStats`: the advantage phase (KL to the reference, TIS weights, the estimator's
  own scalars, each agent's advantages as the policy trains on them);
* :class:`CriticStats`: the critic's fit;
* :class:`PolicyStats`: the policy phase (per agent, per adapter, and which adapters were trained
  or skipped a non-finite update).

Two of the per-agent diagnostics are computed here from tensors: :meth:`AgentAdvantages.of` and
:func:`cut_share`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

NAN = float("nan")
ZERO_ADVANTAGE = 1e-8
"""An advantage whose absolute value is below this counts as zero (``adv_zero_share``)."""


@dataclass
class LogprobGap:
    """How far the sampler's log-probs of one agent's sampled tokens are from the learner's
    (absolute difference over real tokens).

    Attributes:
        mean: the mean gap.
        max: the largest gap.
    """

    mean: float
    max: float


@dataclass
class ScoreStats:
    """The scoring phase's stats.

    Attributes:
        logprob_gap: per agent whose old log-probs were recomputed (and had a real token).
    """

    logprob_gap: dict[str, LogprobGap] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``logprob_gap_mean/<role>`` and ``logprob_gap_max/<role>``."""
        out: dict[str, float] = {}
        for role, gap in self.logprob_gap.items():
            out[f"logprob_gap_mean/{role}"] = gap.mean
            out[f"logprob_gap_max/{role}"] = gap.max
        return out


@dataclass
class TisStats:
    """One agent's truncated importance weights (``algorithm.rollout_correction=tis``).

    Attributes:
        weight_mean: the mean weight over real tokens (or actions); 1 without any.
        capped: the fraction of weights at the cap; 0 without any.
    """

    weight_mean: float
    capped: float


@dataclass
class AgentAdvantages:
    """One agent's advantages as the policy trains on them (after normalisation and TIS weights),
    over its real samples, one value per sample (:meth:`of`).

    Attributes:
        mean: their mean.
        std: their standard deviation (population: 0 for a single sample).
        zero_share: the share of samples whose advantage is zero (``|adv| < 1e-8``), which give
            the policy no gradient (e.g. a GRPO group whose returns are all equal).
    """

    mean: float
    std: float
    zero_share: float

    @classmethod
    def of(cls, advantages: Tensor, sample_mask: Tensor, response_mask: Tensor) -> AgentAdvantages | None:
        """The stats of one agent's advantages over its real samples (``sample_mask > 0``); None
        without any.

        Per-token advantages are first reduced to one value per sample, their mean over the
        sample's real tokens (``response_mask``), so that every sample weighs the same and a
        sample is zero when all its tokens are (the share is of samples, not of tokens).

        Args:
            advantages: ``[S]`` per action, or ``[S, L']`` per token (``L' >= L`` columns: the
                longest agent's; the first ``L`` are this agent's tokens).
            sample_mask: ``[S]`` 1 where the agent really acted.
            response_mask: ``[S, L]`` 1 on the agent's real tokens.
        """
        adv = advantages.detach().float()
        if adv.dim() == 2:
            width = min(adv.shape[1], response_mask.shape[1])
            mask = response_mask[:, :width].float()
            adv = (adv[:, :width] * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        adv = adv[sample_mask > 0]  # [R] real samples
        if adv.numel() == 0:
            return None
        return cls(
            mean=float(adv.mean()),
            std=float(adv.std(correction=0)),
            zero_share=float((adv.abs() < ZERO_ADVANTAGE).float().mean()),
        )


@dataclass
class AdvantageStats:
    """The advantage phase's stats.

    Attributes:
        kl_ref: per agent, its summed per-token KL to the reference over its real tokens, divided
            by their number (``algorithm.kl_coef > 0``).
        estimator: the advantage estimator's own scalars by name (``AdvantageOutput.metrics``, an
            open set: a registered estimator may report any, e.g. ``group_return_std``).
        tis: per agent, its TIS weights (``algorithm.rollout_correction=tis``).
        agents: per agent with a real sample this iteration, its advantages as the policy trains
            on them.
    """

    kl_ref: dict[str, float] = field(default_factory=dict)
    estimator: dict[str, float] = field(default_factory=dict)
    tis: dict[str, TisStats] = field(default_factory=dict)
    agents: dict[str, AgentAdvantages] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``kl_ref/<role>``, the estimator's scalars, ``tis_weight_mean/<role>``,
        ``tis_capped/<role>``, ``adv_mean/<role>``, ``adv_std/<role>`` and
        ``adv_zero_share/<role>``."""
        out = {f"kl_ref/{role}": kl for role, kl in self.kl_ref.items()}
        out.update(self.estimator)
        for role, tis in self.tis.items():
            out[f"tis_weight_mean/{role}"] = tis.weight_mean
            out[f"tis_capped/{role}"] = tis.capped
        for role, adv in self.agents.items():
            out[f"adv_mean/{role}"] = adv.mean
            out[f"adv_std/{role}"] = adv.std
            out[f"adv_zero_share/{role}"] = adv.zero_share
        return out


@dataclass
class CriticStats:
    """The critic's fit on one iteration's returns (:meth:`absent` for an algorithm without a
    critic: no columns).

    Attributes:
        value_loss: the mean loss over the optimizer steps taken (NaN if none).
        nonfinite: the fit stopped at a non-finite loss or gradient.
        value_mean: the mean value before the fit, over real entries.
        return_target_mean: the mean regression target, over real entries.
        explained_variance: ``1 - var(returns - values) / var(returns)`` with the values before
            the fit, over real entries (NaN when the returns do not vary:
            :func:`marft.algorithms.explained_variance`).
        fitted: there is a critic and it was fitted (False: :meth:`absent`).
    """

    value_loss: float
    nonfinite: bool
    value_mean: float
    return_target_mean: float
    explained_variance: float
    fitted: bool = True

    @classmethod
    def absent(cls) -> CriticStats:
        """The critic phase of an algorithm without a critic."""
        return cls(NAN, False, NAN, NAN, NAN, fitted=False)

    def metrics(self) -> dict[str, float]:
        """``value_loss``, ``nonfinite_skip/critic``, ``value_mean``, ``return_target_mean`` and,
        in iterations where the returns vary, ``explained_variance`` (no column where it has no
        value, as the rows' NaN would be written as null); none without a critic."""
        if not self.fitted:
            return {}
        out = {
            "value_loss": self.value_loss,
            "nonfinite_skip/critic": float(self.nonfinite),
            "value_mean": self.value_mean,
            "return_target_mean": self.return_target_mean,
        }
        if math.isfinite(self.explained_variance):
            out["explained_variance"] = self.explained_variance
        return out


@dataclass
class AgentStats:
    """One agent's actions this iteration.

    Attributes:
        entropy: the mean token entropy of its sampling distribution over its real tokens.
        response_tokens: the mean length of its actions (real actions only).
        cut_share: the share of its real actions cut at the length limit (:func:`cut_share`);
            NaN, and no column, without real actions.
    """

    entropy: float
    response_tokens: float
    cut_share: float = NAN


@dataclass
class AdapterStats:
    """One adapter's policy update this iteration (an agent's, or the shared one).

    Attributes:
        trained: it was updated (its agents train this iteration).
        policy_loss: the mean policy loss over the minibatches it was evaluated on (NaN if none).
        approx_kl: the k3 KL estimate of the last minibatch evaluated (NaN if none).
        clipfrac: the mean clipped fraction over those minibatches (NaN if none).
        optimizer_steps: the optimizer steps taken.
        kl_early_stop: its epochs stopped early at ``algorithm.target_kl``.
        nonfinite: it skipped its update at a non-finite loss or gradient.
        grad_norm: the mean gradient norm before clipping over the minibatches it stepped on (or
            stopped at for their KL) (NaN if none).
        update_norm: the L2 norm of the change of its trainable parameters over the whole update
            (0 without a step).
    """

    trained: bool = True
    policy_loss: float = NAN
    approx_kl: float = NAN
    clipfrac: float = NAN
    optimizer_steps: int = 0
    kl_early_stop: bool = False
    nonfinite: bool = False
    grad_norm: float = NAN
    update_norm: float = 0.0

    def metrics(self, name: str) -> dict[str, float]:
        """Its columns, suffixed ``/<name>``; an adapter not trained reports a zero loss and KL."""
        if not self.trained:
            return {f"policy_loss/{name}": 0.0, f"approx_kl/{name}": 0.0}
        return {
            f"policy_loss/{name}": self.policy_loss,
            f"approx_kl/{name}": self.approx_kl,
            f"clipfrac/{name}": self.clipfrac,
            f"optimizer_steps/{name}": float(self.optimizer_steps),
            f"kl_early_stop/{name}": float(self.kl_early_stop),
            f"nonfinite_skip/{name}": float(self.nonfinite),
            f"grad_norm/{name}": self.grad_norm,
            f"update_norm/{name}": self.update_norm,
        }


@dataclass
class PolicyStats:
    """The policy phase's stats.

    Attributes:
        agents: per agent (acting order), its actions' stats.
        adapters: per adapter (the agents' roles, or ``shared``), its update.
        fwd_bwd_s: seconds in the policy's forwards and backwards.
    """

    agents: dict[str, AgentStats] = field(default_factory=dict)
    adapters: dict[str, AdapterStats] = field(default_factory=dict)
    fwd_bwd_s: float = 0.0

    @property
    def trained(self) -> list[str]:
        """The adapters that were updated (their generation weights change)."""
        return [name for name, a in self.adapters.items() if a.trained]

    @property
    def nonfinite(self) -> list[str]:
        """The adapters that skipped their update at a non-finite loss or gradient."""
        return [name for name, a in self.adapters.items() if a.nonfinite]

    def metrics(self) -> dict[str, float]:
        """``entropy/<role>``, ``response_tokens/<role>``, ``cut_share/<role>`` (agents with a real
        action), each adapter's columns (:meth:`AdapterStats.metrics`) and ``time_fwd_bwd_s``."""
        out: dict[str, float] = {}
        for role, agent in self.agents.items():
            out[f"entropy/{role}"] = agent.entropy
            out[f"response_tokens/{role}"] = agent.response_tokens
            if math.isfinite(agent.cut_share):
                out[f"cut_share/{role}"] = agent.cut_share
        for name, adapter in self.adapters.items():
            out.update(adapter.metrics(name))
        out["time_fwd_bwd_s"] = self.fwd_bwd_s
        return out


def cut_share(
    response_ids: Tensor, response_mask: Tensor, sample_mask: Tensor, eos_ids: Sequence[int]
) -> float:
    """The share of an agent's real actions (``sample_mask > 0``) that were cut at the length
    limit: that ended without an end-of-turn token (NaN without real actions).

    Generation keeps the end-of-turn token of an action that ends its turn as its last real token
    (both backends), and otherwise stops a row only at its token limit (vLLM also at the model's
    context length, a cut too); so an action is cut exactly when its last real token is not one of
    ``eos_ids``, and its limit (``agent.max_new_tokens`` or ``sampling.max_new_tokens``) is not
    needed. An action without a real token counts as not cut.

    Args:
        response_ids: ``[S, L]`` right-padded sampled tokens.
        response_mask: ``[S, L]`` 1 on real tokens (a prefix of each row).
        sample_mask: ``[S]`` 1 where the agent really acted.
        eos_ids: the token ids that end an action (``TeamModel.eos_ids``).
    """
    real = sample_mask > 0
    if not bool(real.any()):
        return NAN
    n = response_mask.sum(-1).long()  # [S] real tokens of each action
    last = response_ids.gather(1, (n - 1).clamp(min=0)[:, None])[:, 0]  # [S]
    eos = torch.tensor(list(eos_ids), dtype=response_ids.dtype, device=response_ids.device)
    cut = (n > 0) & ~torch.isin(last, eos)
    return float(cut[real].float().mean())
