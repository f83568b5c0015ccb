import subprocess
import sys

import pytest

from marft.compose import load_config
from marft.config import ConfigError


def error_of(*overrides, source="demo"):
    with pytest.raises(ConfigError) as e:
        load_config(source, list(overrides))
    return str(e.value)


def test_demo_preset_loads_and_overrides_apply():
    cfg = load_config("demo", ["algorithm.policy_lr=1e-4", "team.agents.1.trainable=false", "env.n_envs=4"])
    assert cfg.algorithm.policy_lr == 1e-4
    assert cfg.team.agents[1].trainable is False
    assert cfg.env.n_envs == 4


@pytest.mark.parametrize(
    "override, expected",
    [
        ("algorithm.clip_ep=0.1", "algorithm.clip_ep: unknown key (did you mean 'clip_eps'?)"),
        ("bogus.x=1", "bogus: unknown key"),
        ("algorithm.clip_eps=-1", "algorithm.clip_eps: must be > 0"),
        ("algorithm.ppo_epochs=1.5", "algorithm.ppo_epochs: must be an integer"),
        ("algorithm.value_loss=l1", "algorithm.value_loss: must be one of 'huber', 'mse'"),
        ("algorithm.name=sac", "algorithm.name: unknown algorithm 'sac'; choose one of: appo"),
        ("sampling.top_p=0", "sampling.top_p: must be in (0, 1]"),
        ("sampling.backend=vllm9", "sampling.backend: unknown backend"),
        ("env.name=nope", "env.name: unknown env 'nope'; choose one of: code, experts, judged, math, signal"),
        ("env.name=no.such.module:Env", "env.name: cannot import env module"),
        ("env.kwargs.symbols=[red]", "env.kwargs.symbols: needs at least two distinct symbols"),
        ("env.kwargs.colour=1", "env.kwargs.colour: unknown key"),
        ("env.kwargs.answer_role=judge", "env.kwargs.answer_role: role 'judge' is not in the team"),
        ("env.reward_assignment=all", "env.reward_assignment: must be one of 'last', 'shared', 'per_agent'"),
        ("model.device=tpu", "model.device: must be auto, cpu, cuda, cuda:N or mps"),
        ("model.logit_chunk_tokens=-1", "model.logit_chunk_tokens: must be >= 0"),
        ("model.gradient_checkpointing=yes please", "model.gradient_checkpointing: must be"),
        ("team.agents.1.observes=[ghost]", "team.agents.1.observes.0: unknown role 'ghost'"),
        ("team.agents.1.role=speaker", "team.agents.1.role: duplicate role 'speaker'"),
        ("team.agents.0.observes=[listener]", "the dependency graph has a cycle"),
        ("team.agents.0.role=default", "team.agents.0.role: must be an identifier"),
        ("run.iterations=0", "run.iterations: must be a positive integer"),
        ("lora.r=true", "lora.r: must be an integer"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    assert expected in error_of(override)


def test_all_agents_frozen_is_an_error():
    assert "no agent is trainable" in error_of(
        "team.agents.0.trainable=false", "team.agents.1.trainable=false"
    )


def test_missing_file_and_team(tmp_path):
    assert "does not exist" in error_of(source=str(tmp_path / "nope.yaml"))
    empty = tmp_path / "empty.yaml"
    empty.write_text("run: {iterations: 3}\n")
    assert "team: is required" in error_of(source=str(empty))


def test_cli_config_error_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "marft.cli",
            "train",
            "--set",
            "algorithm.clip_eps=-1",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "algorithm.clip_eps: must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was created or loaded


def test_cli_help_documents_overrides():
    proc = subprocess.run(
        [sys.executable, "-m", "marft.cli", "train", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "--set" in proc.stdout and "--out" in proc.stdout and "metrics.jsonl" in proc.stdout


def test_a_key_that_is_a_python_keyword_round_trips_through_config_yaml():
    """``run.ray.async`` is the field ``async_``: YAML, overrides, errors and the saved
    ``config.yaml`` all use ``async``."""
    import yaml

    from marft.config import Config
    from marft.config.loading import from_dict, to_dict

    asynchronous = ["run.ray.async.max_staleness=2", "run.ray.async.behaviour_logprobs=recompute"]
    ray = ["run.ray.address=local", "algorithm.rollout_correction=tis"]
    cfg = load_config("demo", [*ray, *asynchronous])
    assert cfg.run.ray.async_.max_staleness == 2
    saved = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    assert saved["run"]["ray"]["async"] == {"max_staleness": 2, "behaviour_logprobs": "recompute"}
    assert "async_" not in saved["run"]["ray"]
    assert from_dict(Config, saved) == cfg
    with pytest.raises(ConfigError, match="run.ray.async_: unknown key \\(did you mean 'async'\\?\\)"):
        load_config("demo", ["run.ray.async_.max_staleness=1"])
    with pytest.raises(ConfigError, match="run.ray.async.behaviour_logprobs"):
        load_config("demo", ["run.ray.async.behaviour_logprobs=guess"])
