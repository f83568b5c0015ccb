"""``marft plan``: the scoring logits follow ``model.logit_chunk_tokens``, the update's
activations ``model.gradient_checkpointing``; MARFT's reference layout keeps both whole."""

from marft.compose import load_config
from marft.plan import model_shape, plan

BASE = [
    "model.name=shape:qwen2.5-0.5b",  # a built-in shape: nothing is read from disk or the hub
    "algorithm.kl_coef=0.1",  # reference log-probs are scored
    "env.n_envs=8",
    "sampling.max_new_tokens=64",
    "algorithm.micro_batch_size=4",
    "algorithm.micro_batch_tokens=0",
]


def learner_and_reference(*extra: str):
    cfg = load_config("demo", BASE + list(extra))
    plans = plan(cfg, model_shape(cfg), prompt_tokens=100, gpu_memory_gb=80)
    return plans[0], plans[-1]


def test_scoring_logits_follow_the_chunk_and_the_reference_layout_keeps_them_whole():
    V, turn, action = 151936, 1, 64  # the demo's levels hold one agent each
    whole, ref = learner_and_reference("model.logit_chunk_tokens=0")
    chunked, ref_chunked = learner_and_reference("model.logit_chunk_tokens=64")
    # fp32 logits, warped, log-softmax: 3 x 4 bytes per vocabulary entry of each scored token
    assert whole.phases["logits (scoring)"] == 3 * 4 * 8 * turn * action * V
    assert chunked.phases["logits (scoring)"] == 3 * 4 * 64 * V
    # the update's logits: 5 fp32 tensors of 4 rows x 65 positions, or of one 64-token chunk
    diff = whole.phases["activations (update)"] - chunked.phases["activations (update)"]
    assert diff == 5 * 4 * (4 * 65 - 64) * V
    assert ref.phases == ref_chunked.phases  # MARFT's layout does not chunk
    assert ref_chunked.phases["logits (scoring)"] == whole.phases["logits (scoring)"]


def test_gradient_checkpointing_keeps_one_tensor_per_layer_and_token():
    plain, _ = learner_and_reference()
    ckpt, ref = learner_and_reference("model.gradient_checkpointing=true")
    # Qwen2.5-0.5B: 24 layers, hidden 896, kv 2 x 64, MLP 4864; bf16; 4 rows x (100 + 64) tokens.
    # Kept per token and layer without checkpointing: 7 x 896 + 3 x 128 + 4 x 4864 = 26112 values;
    # with it, one 896-wide input per layer plus one layer's 26112.
    saved = 4 * 164 * 2 * (24 * 26112 - (24 * 896 + 26112))
    assert plain.phases["activations (update)"] - ckpt.phases["activations (update)"] == saved
    assert ref.phases["activations (update)"] == plain.phases["activations (update)"]
    assert ckpt.total < plain.total


def test_a_shape_without_prompt_tokens_asks_for_them():
    import pytest

    from marft.config import ConfigError
    from marft.plan import plan_text

    with pytest.raises(ConfigError, match="--prompt-tokens.*shape without a tokenizer"):
        plan_text(load_config("demo", BASE))
    assert "prompt tokens: 100" in plan_text(load_config("demo", BASE), prompt_tokens=100)


def test_a_shared_adapter_is_planned_once():
    per_role, _ = learner_and_reference()
    shared, ref = learner_and_reference("lora.shared=true")
    key = "adapters + optimizer"
    assert shared.items[key] * 2 == per_role.items[key]  # the demo's two agents, one adapter
    assert ref.items["base copies"] == learner_and_reference()[1].items["base copies"]


def test_a_learner_of_several_bases_holds_every_base_and_the_largest_phase():
    from marft.plan import DevicePlan, team_learner

    small = DevicePlan("learner", items={"base": 1.0, "adapters": 2.0}, phases={"kv": 3.0, "update": 5.0})
    large = DevicePlan("learner", items={"base": 4.0}, phases={"kv": 10.0, "update": 6.0})
    assert team_learner([small, large]) == 1.0 + 2.0 + 4.0 + 10.0
