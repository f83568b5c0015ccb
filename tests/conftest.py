"""Shared fixtures: the built-in tiny model and team, built offline in well under a second."""

from __future__ import annotations

import pytest
import torch

from marft.compose import load_config
from marft.config import LoraSettings, ModelConfig, TinyModelConfig
from marft.models import TeamModel, load_base

CORPUS = ["name the secret colour", "red green blue yellow", "speaker listener : say one word"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def make_team_model(
    roles=("speaker", "listener"), modules_to_save=("lm_head",), seed=0, shared=False
) -> TeamModel:
    base, tok = load_base(ModelConfig(name="tiny", tiny=TinyModelConfig(seed=seed)), CORPUS)
    lora = LoraSettings(
        r=4,
        alpha=8,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=list(modules_to_save),
        shared=shared,
    )
    return TeamModel(base, tok, list(roles), lora, value_head_width=16)


@pytest.fixture
def team_model() -> TeamModel:
    return make_team_model()


def small_config(*overrides: str):
    """The demo config shrunk for fast tests (progress bar and TensorBoard off)."""
    base = [
        "run.progress=false",
        "run.tensorboard=false",
        "run.report=false",
        "env.n_envs=8",
        "run.iterations=2",
        "algorithm.ppo_epochs=1",
    ]
    return load_config("demo", base + list(overrides))


def collect_scored(trainer, steps: int | None = None):
    """One collection and its scoring phase: ``(trajectory, scores)``."""
    traj = trainer.collector.collect(steps or trainer.steps_per_rollout)
    return traj, trainer.scorer.score(traj)
