"""``lora.shared``: one adapter for every agent (one policy with role prompts), and
``run.token_budget``: runs that stop at a number of generated training tokens."""

import json

import pytest
import torch

from marft.algorithms import agg_units
from marft.compose import load_config
from marft.config import ConfigError
from marft.export import export_agent
from marft.learner.batching import PolicyBatch, rows_of, sequences
from marft.models import SamplingParams
from marft.trainer.checkpoint import CheckpointError, load_adapter_weights
from marft.trainer.trainer import Trainer
from tests.conftest import collect_scored, make_team_model, small_config

SHARED = "lora.shared=true"


def setup(tmp_path, *overrides, name="run", resume=False):
    trainer = Trainer(small_config(*overrides), tmp_path / name, resume=resume)
    trainer.setup()
    return trainer


def test_one_adapter_serves_every_role():
    model, shared = make_team_model(), make_team_model(shared=True)
    assert model.adapters == ["speaker", "listener"] and shared.adapters == ["shared"]
    assert shared.adapter_name("listener") == "shared" and shared.adapter_name("__base__") == "__base__"
    assert [id(p) for p in shared.adapter_parameters("speaker")] == [
        id(p) for p in shared.adapter_parameters("listener")
    ]
    assert set(shared.adapter_weights(["speaker", "listener"])) == {"shared"}
    with pytest.raises(ValueError, match="no adapter 'speaker'.*lora.shared"):
        shared.set_adapter_weights({"speaker": {}})


def test_shared_update_moves_the_one_adapter_and_nothing_else(tmp_path):
    trainer = setup(tmp_path, SHARED)
    model = trainer.parts.model
    base = {n: p.detach().clone() for n, p in model.base_parameters()}
    before = [p.detach().clone() for p in model.adapter_parameters("shared")]
    result = trainer.parts.learner.update(*collect_scored(trainer), 0)
    assert result.trained == ["shared"] and list(trainer.parts.learner.policy.optimizers) == ["shared"]
    after = model.adapter_parameters("shared")
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(torch.equal(base[n], p) for n, p in model.base_parameters())
    m = result.metrics
    assert "policy_loss/shared" in m and "policy_loss/speaker" not in m
    assert {"entropy/speaker", "entropy/listener", "response_tokens/listener"} <= set(m)  # per agent still


def _grads(model, fn):
    params = model.adapter_parameters("shared")
    for p in params:
        p.grad = None
    with model.adapter("shared"):
        loss = fn()
    return loss, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize(
    ("algorithm", "mode"),
    [
        (["algorithm.name=appo"], "action-mean"),
        (["algorithm.name=grpo", "algorithm.group_size=4"], "token-mean"),
        (
            ["algorithm.name=grpo", "algorithm.group_size=4", "algorithm.loss_agg_mode=seq-mean-token-sum"],
            "seq-mean-token-sum",
        ),
    ],
    ids=["action", "token", "sequence"],
)
def test_the_merged_batch_gives_the_gradient_of_each_agent_weighted_by_its_share(tmp_path, algorithm, mode):
    """One update over both agents' actions (padded together) equals each agent's own
    update-gradient weighted by its share of the minibatch's units of the loss's aggregation
    (actions, response tokens or sequences): merging pads, it changes no row."""
    trainer = setup(tmp_path, SHARED, "algorithm.entropy_coef=0", "algorithm.kl_coef=0", *algorithm)
    assert trainer.parts.learner.policy.agg_mode == mode  # the algorithm's default, or the config's
    traj, scores = collect_scored(trainer)
    targets = trainer.parts.learner.targets(traj, scores)
    batches = [
        PolicyBatch(traj.agents[n], scores.old_logprobs[n], None, t.advantages, t.sample_mask)
        for n, t in enumerate(targets.agents)
    ]
    assert traj.agents[0].prompt_ids.shape[1] != traj.agents[1].prompt_ids.shape[1]  # padding matters
    merged = PolicyBatch.merge(batches)
    policy, model = trainer.parts.learner.policy, trainer.parts.model
    S = merged.actions.prompt_ids.shape[0]
    loss, grads = _grads(model, lambda: policy.minibatch_backward(merged, torch.arange(S)).policy_loss)
    weights = [agg_units(mode, b.actions.response_mask, b.sample_mask).sum() for b in batches]
    total = sum(weights)
    expect_loss, expect = 0.0, [torch.zeros_like(g) for g in grads]
    for b, w in zip(batches, weights, strict=True):
        rows = torch.arange(b.actions.prompt_ids.shape[0])
        lo, g = _grads(model, lambda b=b, rows=rows: policy.minibatch_backward(b, rows).policy_loss)
        expect_loss = expect_loss + lo * w / total
        expect = [e + x * w / total for e, x in zip(expect, g, strict=True)]
    torch.testing.assert_close(loss, expect_loss, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expect, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    # and every merged row's log-probs are those of the agent's own row
    seq = sequences(merged.actions)
    n0 = traj.agents[0].prompt_ids.shape[0]
    sampling = SamplingParams()
    with model.adapter("shared"):
        lp, _ = model.action_logprobs(rows_of(seq, torch.arange(n0, S)), sampling)
        own, _ = model.action_logprobs(rows_of(sequences(traj.agents[1]), torch.arange(S - n0)), sampling)
    torch.testing.assert_close(lp[:, : own.shape[1]], own, rtol=1e-5, atol=1e-5)


def test_shared_runs_save_resume_export_and_refuse_a_per_role_config(tmp_path):
    whole = setup(tmp_path, SHARED, "run.iterations=2", name="whole").train()
    ckpt = whole.checkpoint
    assert sorted(p.name for p in (ckpt / "adapters").iterdir()) == ["shared"]
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["adapter_of"] == {"speaker": "shared", "listener": "shared"}
    # resume: 1 + 1 iterations equal 2
    setup(tmp_path, SHARED, "run.iterations=1", name="parts").train()
    resumed = setup(tmp_path, SHARED, "run.iterations=2", name="parts", resume=True).train()
    a = (ckpt / "adapters" / "shared" / "adapter_model.safetensors").read_bytes()
    b = (resumed.checkpoint / "adapters" / "shared" / "adapter_model.safetensors").read_bytes()
    assert a == b
    # export by role: every role is the shared adapter
    out = export_agent(tmp_path / "whole", "listener", tmp_path / "exported")
    assert (out / "adapter_model.safetensors").read_bytes() == a
    with pytest.raises(CheckpointError, match="agents: listener, speaker"):
        export_agent(tmp_path / "whole", "nobody", tmp_path / "x")
    # a per-role team cannot load it, and says why
    per_role = setup(tmp_path, name="other")
    with pytest.raises(CheckpointError, match="no adapter 'speaker'.*lora.shared"):
        load_adapter_weights(per_role.parts.model, ckpt)


def test_shared_adapter_and_a_frozen_agent_is_a_config_error():
    with pytest.raises(ConfigError, match="lora.shared.*listener cannot stay frozen"):
        load_config("demo", [SHARED, "team.agents.1.trainable=false"])
    with pytest.raises(ConfigError, match="run.token_budget"):
        load_config("demo", ["run.token_budget=0"])


def test_a_token_budget_stops_the_run_after_the_iteration_that_reaches_it(tmp_path):
    first = setup(tmp_path, "run.iterations=1", name="probe").train()
    per_iter = first.rows[0]["generated_tokens"]
    assert per_iter > 0
    budget = int(per_iter * 2.5)
    result = setup(tmp_path, "run.iterations=50", f"run.token_budget={budget}", name="budget").train()
    tokens = [r["generated_tokens"] for r in result.rows]
    assert tokens[-1] >= budget > tokens[-2] and tokens == sorted(tokens)
    assert result.checkpoint.name == f"iter-{len(tokens):06d}"  # saved where it stopped
    assert tokens[0] == per_iter  # the same seed samples the same first iteration
    # resuming a run whose budget is spent trains no further
    again = setup(tmp_path, "run.iterations=50", f"run.token_budget={budget}", name="budget", resume=True)
    assert len(again.train().rows) == len(tokens)
