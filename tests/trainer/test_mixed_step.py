"""``algorithm.policy_step=mixed``: every adapter's minibatch in one forward and backward is the
per-adapter update computed together."""

import copy
import warnings

import pytest
import torch

from marft.learner.batching import PolicyBatch
from marft.trainer import Trainer
from tests.conftest import collect_scored, small_config
from tests.trainer.test_microbatching import chain_length, float32_bound, within

ROLES = ["speaker", "listener"]


def team(tmp_path, *overrides: str) -> Trainer:
    """The demo team (two adapters and a per-agent ``lm_head`` copy each) with non-trivial
    adapters, so that every LoRA matrix gets a gradient."""
    cfg = small_config(
        "env.n_envs=12",
        "algorithm.entropy_coef=0.01",
        "algorithm.kl_coef=0.1",
        "sampling.max_new_tokens=4",
        *overrides,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    torch.manual_seed(1)
    with torch.no_grad():
        for role in ROLES:
            for p in trainer.parts.model.adapter_parameters(role):
                p.add_(0.05 * torch.randn_like(p))
    return trainer


def batches(trainer) -> dict[str, PolicyBatch]:
    """Each agent's batch, with advantages far from zero and two padded samples."""
    traj, scores = collect_scored(trainer, 1)
    out = {}
    for i, role in enumerate(ROLES):
        old = scores.old_logprobs[i]
        S, L = old.shape
        adv = torch.linspace(-2, 2, S) * (1 if i else -1)
        if trainer.cfg.algorithm.name == "tppo":
            adv = adv[:, None] + torch.linspace(-1, 1, L)[None, :]
        mask = torch.ones(S)
        mask[[1 + i, 7]] = 0.0
        device = old.device
        out[role] = PolicyBatch(traj.agents[i], old, scores.ref_logprobs[i], adv.to(device), mask.to(device))
    return out


def grads(trainer, role: str) -> list[torch.Tensor]:
    return [p.grad.clone() for p in trainer.parts.model.adapter_parameters(role)]


def clear_grads(trainer) -> None:
    for role in ROLES:
        for p in trainer.parts.model.adapter_parameters(role):
            p.grad = None


def per_adapter_grads(trainer, steps: dict[str, PolicyBatch], **cfg_changes):
    """Each adapter's minibatch (the whole batch) under PEFT's active adapter: loss terms and
    gradients."""
    policy = trainer.parts.learner.policy
    for k, v in cfg_changes.items():
        setattr(policy.cfg, k, v)
    out = {}
    clear_grads(trainer)
    for role, batch in steps.items():
        with trainer.parts.model.adapter(role):
            terms = policy.minibatch_backward(batch, torch.arange(len(batch.sample_mask)))
        out[role] = (terms, grads(trainer, role))
    return out


def abs_terms(trainer, steps: dict[str, PolicyBatch]) -> dict[str, list[torch.Tensor]]:
    """Per adapter, per gradient element, the sum of the absolute per-sample terms (one sample per
    micro-batch; a leaf tensor's hook sees each backward's term before it is added)."""
    policy = trainer.parts.learner.policy
    policy.cfg.micro_batch_size = 1
    policy.cfg.micro_batch_tokens = 0
    sums = {}
    for role, batch in steps.items():
        with trainer.parts.model.adapter(role):
            params = trainer.parts.model.adapter_parameters(role)
            sums[role] = [torch.zeros_like(p) for p in params]
            hooks = [
                p.register_hook(lambda g, s=s: s.add_(g.abs()))
                for p, s in zip(params, sums[role], strict=True)
            ]
            try:
                policy.minibatch_backward(batch, torch.arange(len(batch.sample_mask)))
            finally:
                for h in hooks:
                    h.remove()
    return sums


@pytest.mark.parametrize("algo", ["appo", "grpo", "tppo"])
@pytest.mark.parametrize("micro", [dict(micro_batch_size=64), dict(micro_batch_size=5)])
def test_mixed_minibatch_equals_per_adapter_minibatches(tmp_path, algo, micro):
    """One mixed forward and backward over both adapters' rows gives each adapter the gradient
    and loss terms of its own minibatch alone, within the float32 bound of
    ``test_microbatching`` (entropy bonus, KL term and per-agent ``lm_head`` copies included)."""
    trainer = team(tmp_path, f"algorithm.name={algo}", "algorithm.group_size=3")
    steps = batches(trainer)
    ref = per_adapter_grads(trainer, steps, micro_batch_tokens=0, **micro)
    policy = trainer.parts.learner.policy
    merged = PolicyBatch.merge(list(steps.values()))
    S = len(steps["speaker"].sample_mask)
    owner = torch.cat([torch.zeros(S, dtype=torch.long), torch.ones(S, dtype=torch.long)])
    clear_grads(trainer)
    got = policy.mixed_minibatch_backward(
        merged, owner, ROLES, {"speaker": torch.arange(S), "listener": torch.arange(S, 2 * S)}
    )
    mixed = {role: grads(trainer, role) for role in ROLES}
    prompt = max(b.actions.prompt_ids.shape[1] for b in steps.values())
    n = chain_length(trainer, 2 * S, prompt + steps["speaker"].actions.response_ids.shape[1])
    sums = abs_terms(trainer, steps)
    for role in ROLES:
        want_terms, want = ref[role]
        for field in ("policy_loss", "approx_kl", "clipfrac", "loss"):
            torch.testing.assert_close(getattr(got[role], field), getattr(want_terms, field))
        bound = float32_bound(sums[role], n)
        assert within(mixed[role], want, bound), role
        assert not within([1.001 * w for w in want], want, bound)  # the bound can fail
        assert any(w.abs().sum() > 0 for w in want)


def test_mixed_update_steps_like_per_adapter(tmp_path):
    """A whole policy update (two epochs of two minibatches, the same minibatches drawn) moves each
    adapter as the per-adapter update does, and reports the same stats."""
    trainer = team(tmp_path, "algorithm.ppo_epochs=2", "algorithm.num_minibatches=2")
    steps = batches(trainer)
    model, policy = trainer.parts.model, trainer.parts.learner.policy
    start = {r: [p.detach().clone() for p in model.adapter_parameters(r)] for r in ROLES}
    opt_state = copy.deepcopy(policy.state_dict())
    moved = {}
    for mode in ("per_adapter", "mixed"):
        with torch.no_grad():
            for r in ROLES:
                for p, s in zip(model.adapter_parameters(r), start[r], strict=True):
                    p.copy_(s)
        policy.load_state_dict(copy.deepcopy(opt_state))
        policy.mixed = mode == "mixed"
        torch.manual_seed(7)
        stats = policy.update(dict(steps))
        moved[mode] = (
            stats,
            {
                r: [p.detach() - s for p, s in zip(model.adapter_parameters(r), start[r], strict=True)]
                for r in ROLES
            },
        )
    (ref_stats, ref), (got_stats, got) = moved["per_adapter"], moved["mixed"]
    lr = trainer.cfg.algorithm.policy_lr
    for role in ROLES:
        assert got_stats[role].optimizer_steps == ref_stats[role].optimizer_steps == 4
        assert got_stats[role].policy_loss == pytest.approx(ref_stats[role].policy_loss, rel=1e-4, abs=1e-7)
        assert got_stats[role].approx_kl == pytest.approx(ref_stats[role].approx_kl, rel=1e-3, abs=1e-8)
        # Adam moves an element about lr per step: the two paths agree to a thousandth of that,
        # but for the rare element whose gradient is about zero, where Adam's normalised step
        # amplifies float32 rounding (on an AMD EPYC, 2026-12-07: 1 of 2,688 elements off by
        # 0.022 lr); the update as a whole agrees to a thousandth
        diff = torch.cat([(g - r).flatten() for g, r in zip(got[role], ref[role], strict=True)])
        whole = torch.cat([r.flatten() for r in ref[role]])
        assert float((diff.abs() > 1e-3 * lr).float().mean()) < 1e-3, role
        assert float(diff.norm()) < 1e-3 * float(whole.norm()), role
        assert max(float(r.abs().max()) for r in ref[role]) > lr  # it really moved


def test_mixed_update_stops_each_adapter_on_its_own_kl(tmp_path):
    """With ``target_kl`` tight, every adapter stops at its second minibatch, as it does alone."""
    trainer = team(
        tmp_path, "algorithm.ppo_epochs=2", "algorithm.num_minibatches=2", "algorithm.target_kl=1e-12"
    )
    policy = trainer.parts.learner.policy
    policy.mixed = True
    stats = policy.update(batches(trainer))
    for role in ROLES:
        assert stats[role].kl_early_stop and stats[role].optimizer_steps == 1


def test_mixed_step_falls_back_with_a_warning_where_gathered_lora_cannot_serve(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "marft.learner.policy.gathered_lora_unsupported", lambda policy: "a LoRA variant (dora)"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(small_config("algorithm.policy_step=mixed"), tmp_path / "run")
        trainer.setup()
    assert not trainer.parts.learner.policy.mixed
    assert any(
        "policy_step=mixed does not serve this model (a LoRA variant (dora))" in str(w.message)
        for w in caught
    )


def test_mixed_policy_step_trains_the_team(tmp_path):
    """``marft train`` with ``policy_step=mixed``: both agents' adapters step in mixed forwards."""
    trainer = Trainer(small_config("algorithm.policy_step=mixed"), tmp_path / "run")
    trainer.setup()
    policy = trainer.parts.learner.policy
    assert policy.mixed
    calls = []
    forward = policy.mixed_micro_batch
    policy.mixed_micro_batch = lambda batch, old, idx, adapters, norms: (
        calls.append(adapters.names) or forward(batch, old, idx, adapters, norms)
    )
    before = {r: [p.detach().clone() for p in trainer.parts.model.adapter_parameters(r)] for r in ROLES}
    result = trainer.parts.learner.update(*collect_scored(trainer, 1), 0)
    assert result.trained == ROLES
    assert calls and all(set(names) == set(ROLES) for names in calls)
    for r in ROLES:
        after = trainer.parts.model.adapter_parameters(r)
        assert any(not torch.equal(a, b) for a, b in zip(before[r], after, strict=True))
