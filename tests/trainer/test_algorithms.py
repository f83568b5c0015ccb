"""TPPO and the critic-free group-relative algorithms on the real engine."""

import pytest
import torch

from marft.learner import ALGORITHMS
from marft.models import SamplingParams
from marft.trainer import Trainer
from tests.conftest import collect_scored, small_config


def make(tmp_path, *overrides):
    trainer = Trainer(small_config("env.n_envs=12", "algorithm.group_size=4", *overrides), tmp_path / "run")
    trainer.setup()
    return trainer


def test_registry_has_every_algorithm():
    assert ALGORITHMS.names() == ["appo", "dr_grpo", "grpo", "reinforce_pp", "rloo", "tppo"]


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
def test_group_relative_runs_build_no_critic(tmp_path, name):
    trainer = make(tmp_path, f"algorithm.name={name}")
    assert trainer.parts.model.value_head is None
    assert trainer.parts.learner.critic is None
    assert not [n for n, _ in trainer.parts.model.named_parameters() if "value_head" in n]
    rollout, scores = collect_scored(trainer)
    assert scores.features is None and scores.next_features is None
    before = [p.detach().clone() for p in trainer.parts.model.adapter_parameters("listener")]
    result = trainer.parts.learner.update(rollout, scores, 0)
    assert "value_loss" not in result.metrics
    assert result.trained == ["speaker", "listener"]
    after = trainer.parts.model.adapter_parameters("listener")
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_groups_share_their_task_instance(tmp_path):
    trainer = make(tmp_path, "algorithm.name=grpo")
    rollout = trainer.parts.sampler.collect(trainer.steps_per_rollout)
    prompts = rollout.agents[0].prompt_ids  # the speaker's prompt holds the secret
    for g in range(3):
        group = prompts[4 * g : 4 * g + 4]
        assert all(torch.equal(group[0], row) for row in group)


def test_episodic_collection_stops_finished_episodes(tmp_path):
    # rounds 2, horizon 3: every episode ends after 2 steps; the rollout stops there.
    trainer = make(tmp_path, "algorithm.name=rloo", "env.kwargs.rounds=2", "env.horizon=3")
    rollout = trainer.parts.sampler.collect(trainer.steps_per_rollout)
    assert rollout.rewards.shape == (12, 2, 2)
    assert rollout.dones[:, -1].tolist() == [1.0] * 12
    assert rollout.env_steps == 24 and rollout.episode_lengths == [2] * 12


def test_group_returns_drive_the_advantages(tmp_path):
    trainer = make(tmp_path, "algorithm.name=dr_grpo")
    rollout, scores = collect_scored(trainer, 1)
    # hand-set rewards: group 0 gets returns (1, 0, 0, 0), the others all 1
    rollout.team_rewards[:] = 1.0
    rollout.team_rewards[1:4] = 0.0
    targets = trainer.parts.learner.targets(rollout, scores)
    adv = targets.agents[0].advantages
    torch.testing.assert_close(adv[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    torch.testing.assert_close(adv[4:], torch.zeros(8))
    torch.testing.assert_close(targets.agents[1].advantages, adv)  # joint credit
    assert targets.critic is None


def test_tppo_values_every_token(tmp_path):
    trainer = make(tmp_path, "algorithm.name=tppo", "sampling.max_new_tokens=3")
    rollout, scores = collect_scored(trainer, 1)
    for a, feats in zip(rollout.agents, scores.features, strict=True):
        S, L = a.response_ids.shape
        assert feats.shape == (S, L, 64)
    assert scores.next_features.shape == (12, 64)
    result = trainer.parts.learner.update(rollout, scores, 0)
    assert result.metrics["value_loss"] > 0 and result.trained == ["speaker", "listener"]


@pytest.mark.parametrize("mode", ["loss", "penalty"])
def test_kl_anchor_is_logged_per_agent_and_pulls_towards_the_base(tmp_path, mode):
    trainer = make(
        tmp_path, "algorithm.kl_coef=0.5", f"algorithm.kl_mode={mode}", "algorithm.kl_estimator=k3"
    )
    rollout, scores = collect_scored(trainer, 1)
    assert scores.ref_logprobs is not None and len(scores.ref_logprobs) == 2
    # before any update the adapters are the base (LoRA B = 0, saved heads copied): KL is 0
    result = trainer.parts.learner.update(rollout, scores, 0)
    assert result.metrics["kl_ref/speaker"] == pytest.approx(0.0, abs=1e-5)
    for _ in range(3):
        result = trainer.parts.learner.update(*collect_scored(trainer, 1), 1)
    assert result.metrics["kl_ref/speaker"] > 0 and result.metrics["kl_ref/listener"] > 0


def test_reference_logprobs_are_the_bare_base(tmp_path):
    trainer = make(tmp_path, "algorithm.kl_coef=0.1")
    with torch.no_grad():
        for role in ("speaker", "listener"):
            for p in trainer.parts.model.adapter_parameters(role):
                p.add_(0.3 * torch.randn_like(p))
    rollout, scores = collect_scored(trainer, 1)
    from marft.learner.batching import sequences

    with torch.no_grad(), trainer.parts.model.adapter(None):
        base_lp, _ = trainer.parts.model.action_logprobs(sequences(rollout.agents[1]), SamplingParams())
    ref = scores.ref_logprobs[1]
    torch.testing.assert_close(ref[:, : base_lp.shape[1]], base_lp, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(rollout.agents[1].logprobs, ref)


def test_rows_of_finished_episodes_are_skipped_even_alone_in_a_micro_batch(tmp_path):
    """Episodic collection pads finished envs with empty rows; they must never reach a forward."""
    trainer = make(
        tmp_path,
        "algorithm.name=grpo",
        "env.kwargs.rounds=2",
        "env.horizon=2",
        "algorithm.micro_batch_size=1",
        "algorithm.recompute_old_logprobs=true",
    )
    rollout = trainer.parts.sampler.collect(trainer.steps_per_rollout)
    T = rollout.rewards.shape[1]
    # pretend env 0 finished after step 0: its step-1 rows are padding, as _scatter writes them
    rollout.action_mask[0, 1:] = 0
    rollout.turns[0, 1:] = -1
    rollout.dones[0, 0] = 1
    for steps in rollout.agents:
        row = 0 * T + 1
        steps.prompt_mask[row] = 0
        steps.response_mask[row] = 0
        steps.logprobs[row] = 0
    result = trainer.parts.learner.update(rollout, trainer.parts.scorer.score(rollout), 0)
    assert result.trained == ["speaker", "listener"]
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
