"""The policy step: per-adapter optimizers and micro-batched clipped updates of the adapters.

Every agent is trained on its own actions with its own adapter on the shared frozen base; agents
that share one adapter (``lora.shared``) train it in one update on all their actions
(:meth:`~marft.learner.batching.PolicyBatch.merge`). Two ways to run a step
(``algorithm.policy_step``):

* ``per_adapter`` (the default): one adapter after another under PEFT's active adapter; also the
  path of models the gathered LoRA does not serve (LoRA variants such as DoRA), and of a step
  with one adapter.
* ``mixed``: every training adapter's minibatch in one forward and one backward, row
  ``s`` under its own adapter (:meth:`~marft.models.team_model.TeamModel.mixed`: gathered LoRA),
  then each adapter's own clip and optimizer step. Each adapter's factors get the gradient of its
  own rows only, so this is the per-adapter update computed together; float32 rounding of the
  batched matmuls may differ in the last bits.

A micro-batch's loss terms are :func:`~marft.learner.terms.micro_batch_terms`: the token log-probs
and entropies under the adapter, the ratio at the level of ``algorithm.loss_agg_mode``, the
registered clipped objective aggregated by that mode, the entropy bonus and the KL term to the
reference, weighted so that a minibatch's gradient is the same whatever the micro-batching.
"""

from __future__ import annotations

import time
import warnings
from typing import Literal

import torch
from torch import Tensor

from marft.algorithms import POLICY_LOSSES
from marft.config import AlgorithmConfig
from marft.learner.batching import PolicyBatch, micro_batches, rows_of, sequences
from marft.learner.parallel import SINGLE, DataParallel
from marft.learner.stats import AdapterStats
from marft.learner.terms import LossTerms, MinibatchNorm, micro_batch_terms
from marft.models.logprobs import SamplingParams
from marft.models.row_adapters import RowAdapters, gathered_lora_unsupported
from marft.models.team_model import TeamModel

Stop = Literal["target_kl", "nonfinite"]
"""Why an adapter's epochs ended early."""


class PolicyUpdater:
    """Per-adapter AdamW optimizers and the clipped policy update of the adapters.

    Args:
        cfg: the algorithm's hyper-parameters.
        sampling: the sampling distribution (log-probs are taken under it).
        model: the team model.
        roles: the trainable agents (one optimizer per adapter they use).
        agg_mode: the policy loss's aggregation (``marft.algorithms.LOSS_AGG_MODES``).
        dp: this process's share of the minibatches among data-parallel learners.
        lrs: per agent with a learning rate of its own, that rate (others: ``policy_lr``).
    """

    def __init__(
        self,
        cfg: AlgorithmConfig,
        sampling: SamplingParams,
        model: TeamModel,
        roles: list[str],
        agg_mode: str,
        dp: DataParallel = SINGLE,
        lrs: dict[str, float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.sampling = sampling
        self.model = model
        self.agg_mode = agg_mode
        self.dp = dp
        self.policy_loss = POLICY_LOSSES.get(cfg.policy_loss)
        own_lr = {model.adapter_name(r): lr for r, lr in (lrs or {}).items()}
        self.optimizers = {
            name: torch.optim.AdamW(
                model.adapter_parameters(name),
                lr=own_lr.get(name, cfg.policy_lr),
                weight_decay=cfg.weight_decay,
            )
            for name in dict.fromkeys(model.adapter_name(r) for r in roles)
        }
        why = gathered_lora_unsupported(model.policy) if cfg.policy_step == "mixed" else None
        if why is not None and len(self.optimizers) > 1:
            warnings.warn(
                f"algorithm.policy_step=mixed does not serve this model ({why}); "
                "the adapters are updated one after another",
                stacklevel=2,
            )
        self.mixed = cfg.policy_step == "mixed" and why is None
        self._active = model.of(roles[0]) if roles else model  # the base of the adapter stepping now
        self.fwd_bwd_s = 0.0  # seconds in policy forwards and backwards since the last reset

    def update(self, batches: dict[str, PolicyBatch]) -> dict[str, AdapterStats]:
        """``ppo_epochs`` x ``num_minibatches`` steps of each adapter on its batch (an agent's, or
        a shared adapter's merged batch), all adapters in one forward and backward per step when
        ``algorithm.policy_step`` is ``mixed``; an adapter's steps end early past ``target_kl``
        or at a non-finite loss or gradient (its whole update is then skipped this iteration)."""
        if self.mixed and len(batches) > 1:
            return self._update_mixed(batches)
        return {name: self.update_adapter(name, batch) for name, batch in batches.items()}

    def update_adapter(self, name: str, batch: PolicyBatch) -> AdapterStats:
        """The steps of adapter ``name`` alone, under PEFT's active adapter."""
        params = self.model.adapter_parameters(name)
        start = _flat(params)
        taken: list[LossTerms] = []  # every minibatch stepped on, or stopped at for its KL
        norms: list[Tensor] = []  # their gradient norms before clipping
        stop: Stop | None = None
        self._active = model = self.model.of(name)
        with model.adapter(name):
            model.policy.train()
            for mb in self._minibatches(batch):
                self.optimizers[name].zero_grad(set_to_none=True)
                stop = self._apply(name, params, self.minibatch_backward(batch, mb), taken, norms)
                if stop is not None:
                    break
        return _adapter_stats(taken, norms, stop, _distance(params, start))

    def _update_mixed(self, batches: dict[str, PolicyBatch]) -> dict[str, AdapterStats]:
        """Every adapter's steps, the k-th minibatches of all adapters in one forward and backward."""
        names = list(batches)
        merged = PolicyBatch.merge(list(batches.values()))  # adapter by adapter, rows in order
        device = merged.sample_mask.device
        sizes = torch.tensor([b.sample_mask.shape[0] for b in batches.values()], device=device)
        owner = torch.repeat_interleave(torch.arange(len(names), device=device), sizes)  # [S]
        offsets = (sizes.cumsum(0) - sizes).tolist()
        # The minibatches are drawn adapter by adapter, as the per-adapter path draws them.
        plans = {
            name: [mb + offset for mb in self._minibatches(batches[name])]
            for name, offset in zip(names, offsets, strict=True)
        }
        params = {name: self.model.adapter_parameters(name) for name in names}
        starts = {name: _flat(params[name]) for name in names}
        taken: dict[str, list[LossTerms]] = {name: [] for name in names}
        norms: dict[str, list[Tensor]] = {name: [] for name in names}
        stops: dict[str, Stop | None] = dict.fromkeys(names)
        self.model.policy.train()
        for k in range(max(len(plan) for plan in plans.values())):
            active = {n: plans[n][k] for n in names if stops[n] is None and k < len(plans[n])}
            if not active:
                break
            for name in active:
                self.optimizers[name].zero_grad(set_to_none=True)
            terms = self.mixed_minibatch_backward(merged, owner, names, active)
            for name in active:
                stops[name] = self._apply(name, params[name], terms[name], taken[name], norms[name])
        return {
            name: _adapter_stats(taken[name], norms[name], stops[name], _distance(params[name], starts[name]))
            for name in names
        }

    def _minibatches(self, batch: PolicyBatch) -> list[Tensor]:
        """Row indices of every step: ``ppo_epochs`` permutations, each in ``num_minibatches``;
        with ``batch.groups``, permutations of the groups, a group's rows in one minibatch."""
        rows = batch.sample_mask.shape[0]
        device = batch.sample_mask.device
        epochs, chunks = self.cfg.ppo_epochs, self.cfg.num_minibatches
        if batch.groups is None:
            return [mb for _ in range(epochs) for mb in torch.randperm(rows, device=device).chunk(chunks)]
        n_groups = int(batch.groups.max()) + 1 if rows else 0
        # tensor_split: ``chunks`` parts as even as whole groups allow (chunk would give fewer)
        return [
            torch.isin(batch.groups, drawn).nonzero().squeeze(1)
            for _ in range(epochs)
            for drawn in torch.randperm(n_groups, device=device).tensor_split(chunks)
            if drawn.numel()
        ]

    def _apply(
        self, name: str, params: list[Tensor], terms: LossTerms, taken: list[LossTerms], norms: list[Tensor]
    ) -> Stop | None:
        """Adapter ``name``'s optimizer step from its accumulated gradient (its minibatch's
        ``terms`` appended to ``taken`` and the gradient's norm before clipping to ``norms``, when
        finite); why its epochs must stop, if they must."""
        cfg = self.cfg
        opt = self.optimizers[name]
        self.dp.sum_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if not (torch.isfinite(terms.policy_loss) and torch.isfinite(grad_norm)):
            # One bad step would poison the adapter and Adam's moments for good: skip this
            # adapter's whole update this iteration; the trainer counts these.
            opt.zero_grad(set_to_none=True)
            return "nonfinite"
        taken.append(terms)
        norms.append(grad_norm.detach())
        # The KL of this forward is that of the policy about to be stepped: stop before a step
        # that would start from a policy already too far from the sampler's.
        if cfg.target_kl is not None and float(terms.approx_kl) > cfg.target_kl:
            return "target_kl"
        opt.step()
        return None

    def minibatch_backward(self, batch: PolicyBatch, mb: Tensor) -> LossTerms:
        """Accumulate the gradient of minibatch ``mb`` (row indices of ``batch``), micro-batch by
        micro-batch, with the adapter active; its loss terms (detached, summed over data-parallel
        learners)."""
        cfg = self.cfg
        seq = sequences(batch.actions)
        sample_mask = batch.sample_mask
        norm = MinibatchNorm.of(self.agg_mode, seq.response_mask[mb], sample_mask[mb])
        old = batch.ratio_old_logprobs(self.agg_mode, cfg.logprob_norm)
        terms = LossTerms.zeros(mb.device)
        # Rows without any real token (finished envs in episodic collection) carry no loss and would
        # trim to an empty sequence: leave them out before micro-batching.
        mb = mb[(seq.response_mask[mb].sum(-1) > 0) & (sample_mask[mb] > 0)]
        if mb.numel() == 0:
            return LossTerms.zeros(sample_mask.device)
        # Data-parallel learners take every G-th row; the shares above are of the whole minibatch.
        for idx in micro_batches(self.dp.shard(mb), seq, cfg.micro_batch_size, cfg.micro_batch_tokens):
            t0 = time.perf_counter()
            part = self.micro_batch_loss(batch, old, idx, norm)
            part.loss.backward()
            self.fwd_bwd_s += time.perf_counter() - t0
            terms = terms + part
        return LossTerms.of_stacked(self.dp.sum(terms.stacked()))

    def micro_batch_loss(
        self, batch: PolicyBatch, old: Tensor, idx: Tensor, norm: MinibatchNorm
    ) -> LossTerms:
        """The loss terms of rows ``idx`` of ``batch`` under the active adapter (with grad),
        weighted by their share of the minibatch (:func:`~marft.learner.terms.micro_batch_terms`).

        ``old``: :meth:`PolicyBatch.ratio_old_logprobs` (``[S]`` or ``[S, L]``).
        """
        rows = rows_of(sequences(batch.actions), idx)
        bonus = self.cfg.entropy_coef > 0
        logprobs, entropy = self._active.action_logprobs(
            rows, self.sampling, entropy=bonus, entropy_grad=bonus
        )
        return micro_batch_terms(
            self.cfg, self.agg_mode, self.policy_loss, batch, old, idx, rows, logprobs, entropy, norm
        )

    def mixed_minibatch_backward(
        self, batch: PolicyBatch, owner: Tensor, names: list[str], minibatches: dict[str, Tensor]
    ) -> dict[str, LossTerms]:
        """Accumulate the gradients of several adapters' minibatches of one merged ``batch``,
        micro-batch by micro-batch, each micro-batch one forward and one backward with every row
        under its own adapter; each adapter's loss terms (detached, summed over data-parallel
        learners).

        Args:
            batch: the adapters' batches merged (``S`` rows).
            owner: ``[S]`` int64: each row's adapter, a position in ``names``.
            names: the adapters of the merged batch.
            minibatches: per adapter stepping now, its minibatch's row indices (into ``batch``).
        """
        cfg = self.cfg
        seq = sequences(batch.actions)
        sample_mask = batch.sample_mask
        norms = {
            name: MinibatchNorm.of(self.agg_mode, seq.response_mask[mb], sample_mask[mb])
            for name, mb in minibatches.items()
        }
        old = batch.ratio_old_logprobs(self.agg_mode, cfg.logprob_norm)
        terms = {name: LossTerms.zeros(sample_mask.device) for name in minibatches}
        rows = torch.cat(list(minibatches.values()))
        rows = rows[(seq.response_mask[rows].sum(-1) > 0) & (sample_mask[rows] > 0)]
        if rows.numel() == 0:
            return terms
        for idx in micro_batches(self.dp.shard(rows), seq, cfg.micro_batch_size, cfg.micro_batch_tokens):
            present, index = torch.unique(owner[idx], return_inverse=True)
            adapters = RowAdapters.from_index([names[i] for i in present.tolist()], index)
            t0 = time.perf_counter()
            parts = self.mixed_micro_batch(batch, old, idx, adapters, norms)
            self.fwd_bwd_s += time.perf_counter() - t0
            for name, part in parts.items():
                terms[name] = terms[name] + part
        summed = self.dp.sum(torch.stack([t.stacked() for t in terms.values()]))
        return {name: LossTerms.of_stacked(values) for name, values in zip(terms, summed, strict=True)}

    def mixed_micro_batch(
        self,
        batch: PolicyBatch,
        old: Tensor,
        idx: Tensor,
        adapters: RowAdapters,
        norms: dict[str, MinibatchNorm],
    ) -> dict[str, LossTerms]:
        """One forward and one backward of rows ``idx`` of ``batch``, row ``idx[s]`` under adapter
        ``adapters`` gives it; per adapter, the loss terms of its rows (weighted by their share of
        its minibatch, ``norms[name]``)."""
        rows = rows_of(sequences(batch.actions), idx)
        bonus = self.cfg.entropy_coef > 0
        with self.model.mixed(adapters) as forward:
            logprobs, entropy = forward.action_logprobs(
                rows, self.sampling, entropy=bonus, entropy_grad=bonus
            )
            parts = {
                name: micro_batch_terms(
                    self.cfg,
                    self.agg_mode,
                    self.policy_loss,
                    batch,
                    old,
                    idx[own],
                    rows.take(own),
                    logprobs[own],
                    entropy[own] if entropy is not None else None,
                    norms[name],
                )
                for name, own in zip(adapters.names, adapters.rows, strict=True)
            }
            torch.stack([part.loss for part in parts.values()]).sum().backward()
        return parts

    def state_dict(self) -> dict[str, dict]:
        return {r: o.state_dict() for r, o in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        missing = set(self.optimizers) - set(state)
        if missing:
            raise ValueError(
                f"the checkpoint has no optimizer state for adapters {sorted(missing)} "
                f"(it has {sorted(state)}; is lora.shared the same as the run's?)"
            )
        for role, opt in self.optimizers.items():
            opt.load_state_dict(state[role])


def _flat(params: list[Tensor]) -> Tensor:
    """``[P]`` float32: an adapter's trainable tensors, copied into one flat tensor (LoRA factors
    and any ``modules_to_save`` copy: one copy per update, to measure how far it moved)."""
    return torch.cat([p.detach().reshape(-1).float() for p in params])


def _distance(params: list[Tensor], start: Tensor) -> float:
    """The L2 norm of ``params`` (now) minus ``start`` (their :func:`_flat` copy before the update)."""
    return float((_flat(params) - start).norm())


def _adapter_stats(
    taken: list[LossTerms], norms: list[Tensor], stop: Stop | None, moved: float
) -> AdapterStats:
    """An adapter's stats from the minibatches it stepped on (or stopped at for their KL), their
    gradient norms before clipping, and how far its parameters ``moved`` (:func:`_distance`)."""
    nan = float("nan")
    return AdapterStats(
        policy_loss=float(torch.stack([t.policy_loss for t in taken]).mean()) if taken else nan,
        approx_kl=float(taken[-1].approx_kl) if taken else nan,
        clipfrac=float(torch.stack([t.clipfrac for t in taken]).mean()) if taken else nan,
        optimizer_steps=len(taken) - (stop == "target_kl"),
        kl_early_stop=stop == "target_kl",
        nonfinite=stop == "nonfinite",
        grad_norm=float(torch.stack(norms).mean()) if norms else nan,
        update_norm=moved,
    )
