"""Shared fixtures: the built-in tiny model and team, built offline in well under a second."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from marft.compose import load_config
from marft.config import LoraSettings, ModelConfig, TinyModelConfig
from marft.models import TeamModel, load_base
from marft.runtime import ThreadGovernor, configure_threads

DATA = Path(__file__).resolve().parent / "fixtures" / "data"
"""Small excerpts of GSM8K, MATH, MBPP and HumanEval (fixtures/data/README.md: sources, licences)."""

CORPUS = ["name the secret colour", "red green blue yellow", "speaker listener : say one word"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _fixed_threads(monkeypatch):
    """A run in a test keeps the threads it starts with: the thread governor would give torch fewer
    while other processes (another test job, a sandboxed program) are busy, and a matmul split over
    fewer threads rounds differently, so recorded numbers would depend on the machine's load.
    The governor's own tests build it directly."""

    def fixed(cls, requested: int = 0) -> ThreadGovernor:
        return cls(configure_threads(requested), adaptive=False)

    monkeypatch.setattr(ThreadGovernor, "for_run", classmethod(fixed))


@pytest.fixture(autouse=True)
def _no_cpu_bf16(monkeypatch):
    """``model.dtype: auto`` resolves as on a CPU without native bf16 (float32) on every host, so a
    test's numbers do not depend on whether the CPU has AVX512-BF16 or AMX; tests of the bf16
    branch patch ``cpu_has_bf16`` themselves."""
    monkeypatch.setattr("marft.models.loading.cpu_has_bf16", lambda: False)


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


def write_tiny_config(path: Path, agents: list[dict], env: dict, **sections: Any) -> Path:
    """A YAML config at ``path`` for ``agents`` on ``env`` with the built-in tiny model (a trained
    ``lm_head`` per agent, so that LoRA can peak its distributions); ``run`` (progress and
    TensorBoard off) and the other sections can be extended by keyword."""
    run = {"iterations": 1, "progress": False, "loggers": [], **sections.pop("run", {})}
    cfg = {
        "run": run,
        "model": {"name": "tiny", "tiny": {"initializer_range": 0.2}},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]},
        "team": {"agents": agents},
        "env": env,
        **sections,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """``marft ARGS`` run in this process: its exit code and what it printed, as a subprocess would
    give them, without a new interpreter's 4 s of imports. An uncaught exception (a traceback in a
    subprocess) propagates and fails the test."""
    from marft import cli

    capsys.readouterr()
    code = cli.main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def small_config(*overrides: str):
    """The demo config shrunk for fast tests (progress bar and TensorBoard off)."""
    base = [
        "run.progress=false",
        "run.loggers=[]",
        "run.report=false",
        "env.n_envs=8",
        "run.iterations=2",
        "algorithm.ppo_epochs=1",
    ]
    return load_config("demo", base + list(overrides))


def collect_scored(trainer, steps: int | None = None):
    """One collection and its scoring phase: ``(trajectory, scores)``."""
    traj = trainer.parts.sampler.collect(steps or trainer.steps_per_rollout)
    return traj, trainer.parts.scorer.score(traj)
