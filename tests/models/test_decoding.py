"""The fast decode path (gathered LoRA, a KV cache allocated once) samples what the eager path does."""

import pytest
import torch
from peft import LoraConfig
from transformers import DynamicCache

from marft.models import SamplingParams
from marft.models.decoding import growing_cache
from marft.models.row_adapters import gathered_lora, gathered_lora_unsupported
from marft.models.sequences import position_ids_from_mask
from marft.rollout import HFBackend, Prompts
from marft.rollout.backends import BASE
from tests.conftest import make_team_model
from tests.models.test_team_model import perturb, prompts

SAMPLING = SamplingParams(temperature=0.9, top_k=20)


def both_paths(model, roles, limits=None, steps=6):
    ids, mask = prompts(model)
    keys = torch.tensor([11, 22, 33, 44])
    out = {}
    for decode in ("eager", "fast"):
        backend = HFBackend(model, SAMPLING, max_new_tokens=steps, decode=decode)
        assert backend.fast == (decode == "fast")
        out[decode] = backend.generate(Prompts(ids, mask), roles, limits, keys)
    return out["eager"], out["fast"]


def test_one_adapter_samples_the_same_tokens_bit_for_bit():
    model = make_team_model()
    perturb(model, "speaker", seed=1)
    eager, fast = both_paths(model, ["speaker"] * 4)
    assert torch.equal(eager.response_ids, fast.response_ids)
    assert torch.equal(eager.response_mask, fast.response_mask)
    assert torch.equal(eager.logprobs, fast.logprobs)
    assert torch.equal(eager.entropy, fast.entropy)


def test_mixed_adapters_and_base_rows_sample_the_same_tokens():
    """Per-row LoRA by batched matmuls, a per-agent output layer (``modules_to_save``) and a row on
    the bare base: the same tokens, log-probs equal up to float32 rounding."""
    model = make_team_model()
    perturb(model, "speaker", seed=1)
    perturb(model, "listener", seed=2)
    roles = ["listener", BASE, "speaker", "listener"]
    limits = torch.tensor([6, 3, 5, 6])
    eager, fast = both_paths(model, roles, limits)
    assert torch.equal(eager.response_ids, fast.response_ids)
    assert torch.equal(eager.response_mask, fast.response_mask)
    torch.testing.assert_close(fast.logprobs, eager.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.entropy, eager.entropy, atol=1e-5, rtol=0)
    assert int(fast.response_mask[1].sum()) <= 3


def test_gathered_lora_equals_each_row_alone_and_restores_the_model():
    model = make_team_model()
    perturb(model, "speaker", seed=3)
    perturb(model, "listener", seed=4)
    ids, mask = prompts(model)
    roles = ["speaker", "listener", BASE, "speaker"]
    with torch.no_grad():
        with gathered_lora(model.policy, roles, ids.device):
            gathered = model.forward_logits(ids, mask, keep=2).logits
        for row, role in enumerate(roles):
            with model.adapter(None if role == BASE else role):
                alone = model.forward_logits(ids[row : row + 1], mask[row : row + 1], keep=2).logits
            torch.testing.assert_close(gathered[row], alone[0], atol=1e-5, rtol=1e-5)
        # Outside the block the modules are PEFT's again: the active adapter applies to every row.
        with model.adapter("listener"):
            after = model.forward_logits(ids, mask, keep=2).logits
    torch.testing.assert_close(after[1], gathered[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after[0], gathered[0])
    assert not any("forward" in vars(m) for m in model.policy.modules())


def test_growing_cache_holds_what_the_concatenating_cache_holds():
    model = make_team_model()
    ids, mask = prompts(model)
    caches = [DynamicCache(), growing_cache(ids.shape[1] + 2)]
    outs = []
    with torch.no_grad(), model.adapter(None):
        for cache in caches:
            first = model.forward_logits(ids, mask, keep=1, past_key_values=cache, use_cache=True)
            step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            nxt = first.logits[:, -1].argmax(-1, keepdim=True)
            pos = position_ids_from_mask(step_mask)[:, -1:]
            second = model.forward_logits(
                nxt, step_mask, keep=1, position_ids=pos, past_key_values=cache, use_cache=True
            )
            outs.append((first.logits, second.logits, cache.get_seq_length()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2] == ids.shape[1] + 1
    full = growing_cache(ids.shape[1])
    with torch.no_grad(), pytest.raises(RuntimeError, match="KV cache of"):
        model.forward_logits(ids, mask, keep=1, past_key_values=full, use_cache=True)
        model.forward_logits(
            ids[:, :1], step_mask, keep=1, position_ids=pos, past_key_values=full, use_cache=True
        )


def test_an_adapter_the_fast_path_does_not_serve_decodes_eagerly_and_says_why():
    model = make_team_model()
    assert gathered_lora_unsupported(model.policy) is None
    dora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    model.policy.add_adapter("dora", dora)
    why = gathered_lora_unsupported(model.policy)
    assert why is not None and "dora" in why.lower()
    with pytest.warns(UserWarning, match="decoding eagerly"):
        backend = HFBackend(model, SAMPLING, max_new_tokens=3)
    assert not backend.fast


def test_lora_on_a_layer_other_than_linear_decodes_eagerly():
    """LoRA on the embeddings (a PEFT ``LoraLayer`` that is not ``lora.Linear``) is not skipped."""
    model = make_team_model()
    model.policy.add_adapter("embeddings", LoraConfig(r=2, target_modules=["embed_tokens"]))
    why = gathered_lora_unsupported(model.policy)
    assert why is not None and "Embedding" in why
