"""Env protocol, reward assignment and multi-turn rollouts with automatic reset."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marft.compose import load_config, make_env
from marft.envs import Env
from marft.rollout import team_reward_vector
from marft.trainer import Trainer, train
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]


def test_signal_env_follows_the_protocol_and_grades_the_first_symbol():
    env = make_env("signal", {"symbols": ["red", "blue"], "rounds": 2})
    assert isinstance(env, Env)
    obs = env.reset(seed=3)
    secret = obs.private["speaker"].split()[-1]
    assert "listener" not in obs.private and secret in ("red", "blue")
    other = "blue" if secret == "red" else "red"
    r1 = env.step({"speaker": "x", "listener": f"um {secret} {other}"})
    assert (r1.rewards, r1.done) == (1.0, False)
    r2 = env.step({"speaker": "x", "listener": "nothing"})
    assert r2.rewards == 0.0 and r2.done and r2.info["answer"] is None


def test_reward_assignment():
    acting = ["a1", "a2", "a3"]
    assert team_reward_vector(1.0, acting, acting, "last") == ([0.0, 0.0, 1.0], 1.0)
    assert team_reward_vector(1.0, acting, acting, "shared") == ([1.0, 1.0, 1.0], 1.0)
    per = {"a1": 0.5, "a3": 1.0}
    assert team_reward_vector(per, acting, acting, "per_agent") == ([0.5, 0.0, 1.0], 1.5)
    assert team_reward_vector(per, acting, acting, "last") == ([0.0, 0.0, 1.5], 1.5)
    with pytest.raises(ValueError, match="per_agent"):
        team_reward_vector(1.0, acting, acting, "per_agent")
    with pytest.raises(ValueError, match="unknown roles"):
        team_reward_vector({"ghost": 1.0}, acting, acting, "shared")


def test_multi_turn_rollout_with_auto_reset_and_horizon(tmp_path):
    # 3-round episodes cut by a horizon of 2; 5 steps per iteration -> episodes end after steps 1 and 3.
    cfg = small_config("env.kwargs.rounds=3", "env.horizon=2", "run.steps_per_iter=5", "env.n_envs=3")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    rollout = trainer.parts.sampler.collect(5)
    assert rollout.rewards.shape == (3, 5, 2)
    assert rollout.dones.tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0]] * 3
    assert rollout.episode_lengths == [2] * 6
    assert rollout.agents[0].prompt_ids.shape[0] == 15
    # reward only on the last agent ("last" assignment), team returns add up
    assert torch.all(rollout.rewards[:, :, 0] == 0)
    ep_total = sum(rollout.episode_returns)
    assert ep_total == pytest.approx(float(rollout.rewards[:, :4].sum()))
    # the unfinished episode carries over to the next rollout
    scores = trainer.parts.scorer.score(rollout)
    nxt = trainer.parts.sampler.collect(1)
    assert nxt.dones.tolist() == [[1.0]] * 3
    result = trainer.parts.learner.update(rollout, scores, 0)
    assert result.trained == ["speaker", "listener"]


def test_custom_env_from_module_path_with_per_agent_rewards(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    cfg = load_config(
        str(ROOT / "examples" / "guess_team.yaml"),
        ["run.iterations=2", "run.progress=false", "run.loggers=[]", "env.n_envs=4"],
    )
    result = train(cfg, tmp_path / "guess")
    assert len(result.rows) == 2 and result.rows[-1]["env_steps"] == 8


def test_cli_train_end_to_end(tmp_path):
    out = tmp_path / "cli"
    args = ["train", "--set", "run.iterations=2", "--set", "env.n_envs=4", "--set", "run.progress=false"]
    proc = subprocess.run(
        [sys.executable, "-m", "marft.cli", *args, "--out", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "mean episode_return" in proc.stdout
    assert (out / "config.yaml").exists() and (
        out / "checkpoints" / "iter-000002" / "adapters" / "listener"
    ).is_dir()
    resolved = load_config(str(out / "config.yaml"))  # the resolved config is itself a valid config
    assert resolved.run.iterations == 2 and resolved.env.n_envs == 4


def test_horizon_cuts_bootstrap_from_the_next_observation(tmp_path):
    # rounds 3, horizon 2: every episode is cut by the horizon, never ended by the env
    cfg = small_config(
        "env.kwargs.rounds=3",
        "env.horizon=2",
        "run.steps_per_iter=2",
        "env.n_envs=3",
        "algorithm.normalize_advantages=false",
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    rollout = trainer.parts.sampler.collect(2)
    assert rollout.truncated.tolist() == [[0.0, 1.0]] * 3 == rollout.dones.tolist()
    assert rollout.cut_index.tolist() == [[0, 1], [1, 1], [2, 1]] and len(rollout.cut_prompts) == 3
    scores = trainer.parts.scorer.score(rollout)
    assert scores.cut_features.shape == (3, 2, 64)
    assert torch.all(scores.cut_features[:, 0] == 0) and torch.all(scores.cut_features[:, 1] != 0)
    # the last agent's advantage at the cut: r + gamma * V(next obs) - V(its obs)  (gamma = lam = 1)
    head = trainer.parts.model.value_head
    with torch.no_grad():
        v_next = head(scores.cut_features[:, 1])
        v_last = head(scores.features[1].reshape(3, 2, -1)[:, 1])
    targets = trainer.parts.learner.targets(rollout, scores)  # no side effects: the critic is not fitted here
    adv_last = targets.agents[1].advantages.reshape(3, 2)[:, 1]
    torch.testing.assert_close(adv_last, rollout.rewards[:, 1, 1] + v_next - v_last)
    # an env that ends by itself is not a truncation
    done_cfg = small_config("env.kwargs.rounds=1", "env.horizon=3", "env.n_envs=3")
    t2 = Trainer(done_cfg, tmp_path / "run2")
    t2.setup()
    r2 = t2.parts.sampler.collect(1)
    assert r2.truncated.sum() == 0 and r2.cut_prompts is None
    assert t2.parts.scorer.score(r2).cut_features is None
