"""Per-agent learning rate and KL coefficient, and holding a role frozen: the levers that train one
role while the others hold."""

import pytest
import torch

from marft.algorithms import kl_estimate
from marft.compose import load_config
from marft.config import ConfigError
from marft.learner.stats import AdvantageStats
from marft.trainer import Trainer
from tests.conftest import collect_scored, small_config


def test_each_agent_gets_its_own_learning_rate(tmp_path):
    trainer = Trainer(small_config("team.agents.0.lr=1e-5"), tmp_path / "run")
    trainer.setup()
    opts = trainer.parts.learner.policy.optimizers
    assert opts["speaker"].param_groups[0]["lr"] == 1e-5
    assert opts["listener"].param_groups[0]["lr"] == trainer.cfg.algorithm.policy_lr


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["team.agents.0.lr=0"], "team.agents.0.lr: must be > 0"),
        (["team.agents.1.kl_coef=-1"], "kl_coef: must be >= 0"),
        (["lora.shared=true", "team.agents.0.lr=1e-5"], r"team.agents.\*.lr: one shared adapter"),
        (
            ["lora.shared=true", "team.agents.0.kl_coef=0.1", "team.agents.1.kl_coef=0.2"],
            r"team.agents.\*.kl_coef: one shared adapter",
        ),
    ],
)
def test_bad_per_agent_levers_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("demo", overrides)


def test_shared_adapter_accepts_one_rate_for_all():
    cfg = load_config("demo", ["lora.shared=true", "team.agents.0.lr=1e-5", "team.agents.1.lr=1e-5"])
    assert [a.lr for a in cfg.team.agents] == [1e-5, 1e-5]


def test_per_agent_kl_penalty_holds_one_role(tmp_path):
    """``kl_mode: penalty`` with a KL coefficient on the speaker only: the reference is scored
    (though ``algorithm.kl_coef`` is 0), and only the speaker's actions are penalised, by exactly
    its coefficient times its summed per-token KL."""
    cfg = small_config("algorithm.kl_mode=penalty", "team.agents.0.kl_coef=0.5")
    assert cfg.algorithm.kl_coef == 0 and cfg.uses_kl()
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    # move the adapters off the base so that the KL is not zero
    with torch.no_grad():
        for role in ("speaker", "listener"):
            for p in trainer.parts.model.adapter_parameters(role):
                p.add_(0.1 * torch.randn_like(p))
    traj, scores = collect_scored(trainer, 1)
    assert scores.ref_logprobs is not None
    learner = trainer.parts.learner
    penalty = learner._kl_penalty(traj, scores, AdvantageStats())
    assert penalty[:, :, 1].abs().max() == 0  # the listener: no penalty
    speaker = traj.agents[0]
    kl = learner.cfg.kl_estimator
    per_token = kl_estimate(speaker.logprobs, scores.ref_logprobs[0], kl) * speaker.response_mask
    want = 0.5 * per_token.sum(-1).reshape(traj.shape[:2]) * traj.action_mask[:, :, 0]
    torch.testing.assert_close(penalty[:, :, 0], want)
    assert want.abs().max() > 0


def test_per_agent_kl_loss_reaches_each_agents_batch(tmp_path):
    """``kl_mode: loss``: each agent's policy batch carries its own coefficient, and the loss
    term grows with it."""
    trainer = Trainer(small_config("algorithm.kl_coef=0.1", "team.agents.1.kl_coef=0.0"), tmp_path / "run")
    trainer.setup()
    learner = trainer.parts.learner
    traj, scores = collect_scored(trainer, 1)
    targets = learner.targets(traj, scores)
    batches = [learner._policy_batch(traj, scores, targets, n) for n in (0, 1)]
    assert [b.kl_coef for b in batches] == [0.1, 0.0]


def test_a_frozen_role_keeps_its_adapter_while_the_other_trains(tmp_path):
    trainer = Trainer(small_config("team.agents.0.trainable=false"), tmp_path / "run")
    trainer.setup()
    model = trainer.parts.model
    before = {r: [p.detach().clone() for p in model.adapter_parameters(r)] for r in ("speaker", "listener")}
    result = trainer.parts.learner.update(*collect_scored(trainer, 1), 0)
    assert result.trained == ["listener"]
    after = {r: model.adapter_parameters(r) for r in before}
    assert all(torch.equal(a, b) for a, b in zip(after["speaker"], before["speaker"], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(after["listener"], before["listener"], strict=True))


def test_agent_wise_normalisation_standardises_each_agents_advantages(tmp_path):
    """``normalize_scope: agent`` (APPO): each agent's advantages have mean 0 and std 1 over its
    own actions."""
    trainer = Trainer(small_config("algorithm.normalize_scope=agent"), tmp_path / "run")
    trainer.setup()
    traj, scores = collect_scored(trainer, 2)
    targets = trainer.parts.learner.targets(traj, scores)
    for own in targets.agents:
        real = own.advantages[own.sample_mask > 0]
        assert abs(float(real.mean())) < 1e-5 and abs(float(real.std()) - 1.0) < 1e-4
