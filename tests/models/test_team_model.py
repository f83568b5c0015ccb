import pytest
import torch

from marft.models import SamplingParams, SequenceBatch
from marft.rollout import HFBackend, Prompts
from tests.conftest import make_team_model


def perturb(model, role, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters(role):
            p.add_(torch.randn(p.shape, generator=g) * scale)


def prompts(model, n=4):
    convs = [
        [{"role": "user", "content": f"name the secret colour {c}"}]
        for c in ["red", "blue", "green", "yellow"][:n]
    ]
    enc = model.tokenizer.apply_chat_template(
        convs, add_generation_prompt=True, tokenize=True, padding=True, return_tensors="pt", return_dict=True
    )
    return enc["input_ids"], enc["attention_mask"]


def test_adding_agents_adds_only_adapter_parameters():
    one = make_team_model(roles=["planner"])
    four = make_team_model(roles=["planner", "coder", "critic", "judge"])
    base_one = dict(one.base_parameters())
    base_four = dict(four.base_parameters())
    assert base_one.keys() == base_four.keys()
    n_base = sum(p.numel() for p in base_four.values())
    assert n_base == sum(p.numel() for p in base_one.values())
    per_adapter = sum(p.numel() for p in four.adapter_parameters("planner"))
    assert all(
        sum(p.numel() for p in four.adapter_parameters(r)) == per_adapter
        for r in ["coder", "critic", "judge"]
    )
    total_one = sum(p.numel() for p in one.policy.parameters())
    total_four = sum(p.numel() for p in four.policy.parameters())
    assert total_four - total_one == 3 * per_adapter
    # Still one base: no base tensor is stored twice.
    ptrs = [p.data_ptr() for p in base_four.values()]
    assert len(set(ptrs)) == len(ptrs)
    assert not any(p.requires_grad for p in base_four.values())


def test_mixed_adapter_batch_equals_one_adapter_at_a_time(team_model):
    perturb(team_model, "speaker", seed=1)
    perturb(team_model, "listener", seed=2)
    ids, mask = prompts(team_model)
    roles = ["speaker", "listener", "listener", "speaker"]
    with torch.no_grad():
        mixed = team_model.forward_logits(ids, mask, keep=1, adapter_names=roles).logits
        for row, role in enumerate(roles):
            with team_model.adapter(role):
                single = team_model.forward_logits(ids[row : row + 1], mask[row : row + 1], keep=1).logits
            torch.testing.assert_close(mixed[row], single[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[0], mixed[1])


def test_reference_policy_and_critic_features_ignore_adapters(team_model):
    ids, mask = prompts(team_model)
    with torch.no_grad(), team_model.adapter(None):
        ref_before = team_model.forward_logits(ids, mask, keep=1).logits
    feats_before = team_model.critic_features(ids, mask)
    perturb(team_model, "speaker")
    with torch.no_grad():
        with team_model.adapter(None):
            ref_after = team_model.forward_logits(ids, mask, keep=1).logits
        with team_model.adapter("speaker"):
            adapted = team_model.forward_logits(ids, mask, keep=1).logits
    torch.testing.assert_close(ref_before, ref_after)
    torch.testing.assert_close(feats_before, team_model.critic_features(ids, mask))
    assert not torch.allclose(adapted, ref_after)


@pytest.mark.parametrize(
    "sampling",
    [SamplingParams(), SamplingParams(temperature=0.7, top_k=10)],
)
def test_sampled_logprobs_equal_training_logprobs(team_model, sampling):
    """The PPO ratio starts at exactly 1: the sampler scores the distribution the learner scores."""
    perturb(team_model, "speaker", seed=3)
    perturb(team_model, "listener", seed=4)
    ids, mask = prompts(team_model)
    roles = ["speaker", "listener", "speaker", "listener"]
    gen = HFBackend(team_model, sampling, max_new_tokens=5).generate(Prompts(ids, mask), roles)
    assert gen.response_ids.shape == gen.logprobs.shape == gen.response_mask.shape
    batch = SequenceBatch(ids, mask, gen.response_ids, gen.response_mask)
    for row, role in enumerate(roles):
        with torch.no_grad(), team_model.adapter(role):
            lp, ent = team_model.action_logprobs(batch, sampling)
        torch.testing.assert_close(lp[row], gen.logprobs[row], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ent[row], gen.entropy[row], atol=1e-4, rtol=1e-4)


def test_trimmed_drops_only_shared_padding():
    b = SequenceBatch(
        prompt_ids=torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]]),
        prompt_mask=torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
        response_ids=torch.tensor([[1, 0, 0], [2, 3, 0]]),
        response_mask=torch.tensor([[1, 0, 0], [1, 1, 0]]),
    ).trimmed()
    assert b.prompt_ids.tolist() == [[0, 5, 6], [7, 8, 9]]
    assert b.response_ids.tolist() == [[1, 0], [2, 3]]


def test_any_hf_causal_lm_folder_loads_and_trains(tmp_path):
    """The Hugging Face loading path (AutoModel/AutoTokenizer from a folder), end to end."""
    from marft.trainer import train
    from tests.conftest import small_config

    src = make_team_model()
    folder = tmp_path / "hf-model"
    src.policy.get_base_model().save_pretrained(folder)
    src.tokenizer.save_pretrained(folder)
    cfg = small_config(
        f"model.name={folder}",
        "model.local_files_only=true",
        "model.dtype=float32",  # auto: bfloat16 on a CPU with native bf16
        "run.iterations=1",
    )
    result = train(cfg, tmp_path / "run")
    assert result.rows[0]["env_steps"] == 8


def test_missing_model_is_a_clear_error_exit_2(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "no-such-model"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "marft.cli",
            "train",
            "--set",
            f"model.name={missing}",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert "cannot load model" in proc.stderr and "Traceback" not in proc.stderr


def test_per_row_token_limits(team_model):
    ids, mask = prompts(team_model)
    limits = torch.tensor([1, 3, 2, 5])
    gen = HFBackend(team_model, SamplingParams(), max_new_tokens=8).generate(
        Prompts(ids, mask), ["speaker"] * 4, limits, torch.arange(4)
    )
    assert (gen.response_mask.sum(-1) <= limits).all()
    assert gen.response_ids.shape[1] <= 5
