"""The fast decode path's CPU kernels: projections sliced over threads, half-precision attention in
float32. Both change how a step is computed, not what it computes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import marft.models.decoding as decoding
from marft.models.decoding import (
    DECODE_ATTENTION,
    _decode_attention,
    float32_decode_attention,
    threaded_linears,
)
from marft.rollout import HFBackend, Prompts
from tests.conftest import make_team_model
from tests.models.test_decoding import SAMPLING, both_paths
from tests.models.test_team_model import perturb, prompts


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_sliced_projections_are_bit_for_bit_the_plain_ones(threads, bias):
    torch.manual_seed(0)
    layer = nn.Linear(576, 1536, bias=bias)
    small = nn.Linear(64, 64)  # below SPLIT_MIN_WEIGHT: left plain
    model = nn.Sequential(layer, small)
    inputs = [torch.randn(rows, 1, 576) for rows in (1, 4, 16)] + [torch.randn(3, 576)]
    plain = [F.linear(x, layer.weight, layer.bias) for x in inputs]
    with threaded_linears(model, threads) as sliced:
        assert sliced == 1
        assert "forward" in layer.__dict__ and "forward" not in small.__dict__
        for x, expected in zip(inputs, plain, strict=True):
            out = layer(x)
            assert out.shape == expected.shape
            assert torch.equal(out, expected)
    assert "forward" not in layer.__dict__  # the class's forward again


def test_strided_or_long_inputs_keep_the_plain_matmul(monkeypatch):
    torch.manual_seed(1)
    layer = nn.Linear(576, 1536, bias=False)
    calls = []
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(a) or torch.ops.aten.bmm(*a))
    hidden = torch.randn(4, 30, 576)
    strided = hidden[:, -1:]  # the prompt's last position: not contiguous
    long = torch.randn(decoding.SPLIT_MAX_ROWS + 1, 576)
    with threaded_linears(layer, 2):
        assert torch.equal(layer(strided), F.linear(strided, layer.weight))
        assert torch.equal(layer(long), F.linear(long, layer.weight))
        assert not calls
        layer(strided.contiguous())
        assert len(calls) == 1


def test_one_thread_a_half_precision_weight_or_an_uneven_split_slices_nothing():
    layer = nn.Linear(576, 1536)
    with threaded_linears(layer, 1) as sliced:
        assert sliced == 0
    with threaded_linears(nn.Linear(576, 1537), 2) as sliced:
        assert sliced == 0
    with threaded_linears(nn.Linear(576, 1536).to(torch.bfloat16), 2) as sliced:
        assert sliced == 0


def test_the_fast_path_with_sliced_projections_samples_bit_for_bit(monkeypatch):
    """Every projection of the tiny model sliced (no size floor): one agent's batch still samples
    exactly what the eager path samples."""
    monkeypatch.setattr(decoding, "SPLIT_MIN_WEIGHT", 0)
    sliced = []
    original = decoding._split_linear
    monkeypatch.setattr(decoding, "_split_linear", lambda *a: sliced.append(1) or original(*a))
    model = make_team_model()
    perturb(model, "speaker", seed=5)
    eager, fast = both_paths(model, ["speaker"] * 4)
    assert sliced  # the decode steps went through the sliced matmul
    assert torch.equal(eager.response_ids, fast.response_ids)
    assert torch.equal(eager.logprobs, fast.logprobs)
    assert torch.equal(eager.entropy, fast.entropy)


def _attention_inputs(dtype):
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(3, 6, 1, 16, generator=generator).to(dtype)
    key = torch.randn(3, 2, 40, 16, generator=generator).to(dtype)  # grouped: 3 queries per key head
    value = torch.randn(3, 2, 40, 16, generator=generator).to(dtype)
    mask = torch.ones(3, 1, 1, 40, dtype=torch.bool)
    mask[0, ..., :7] = False  # a left-padded row
    layer = nn.Module()
    layer.num_key_value_groups = 3
    layer.is_causal = True
    return layer, query, key, value, mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_decode_step_attends_in_float32(dtype):
    layer, query, key, value, mask = _attention_inputs(dtype)
    out, _ = _decode_attention(layer, query, key, value, mask, scaling=0.25)
    reference, _ = sdpa_attention_forward(
        layer, query.float(), key.float(), value.float(), mask, scaling=0.25
    )
    assert out.dtype == dtype
    assert torch.equal(out, reference.to(dtype))
    # An additive mask in half precision is raised with the queries.
    additive = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    out_additive, _ = _decode_attention(layer, query, key, value, additive, scaling=0.25)
    assert torch.equal(out_additive, out)


def test_a_float32_step_or_a_prompt_keeps_transformers_attention():
    layer, query, key, value, mask = _attention_inputs(torch.float32)
    out, _ = _decode_attention(layer, query, key, value, mask, scaling=0.25)
    assert torch.equal(out, sdpa_attention_forward(layer, query, key, value, mask, scaling=0.25)[0])
    layer, query, key, value, _ = _attention_inputs(torch.bfloat16)
    prompt = torch.cat([query] * 4, dim=2)  # four query tokens: the prompt's forward
    causal = torch.ones(3, 1, 4, 40, dtype=torch.bool)
    out, _ = _decode_attention(layer, prompt, key, value, causal, scaling=0.25)
    assert torch.equal(out, sdpa_attention_forward(layer, prompt, key, value, causal, scaling=0.25)[0])


def test_a_bfloat16_team_decodes_with_float32_attention_and_restores_its_config(monkeypatch):
    model = make_team_model()
    perturb(model, "speaker", seed=6)
    model.policy.to(torch.bfloat16)
    config = model.policy.base_model.model.config
    calls = []
    original = decoding.sdpa_attention_forward

    def spy(module, query, *args, **kwargs):
        calls.append(query.dtype)
        return original(module, query, *args, **kwargs)

    monkeypatch.setattr(decoding, "sdpa_attention_forward", spy)
    with float32_decode_attention(model.policy) as switched:
        assert switched == 1 and config._attn_implementation == DECODE_ATTENTION
    assert config._attn_implementation == "sdpa"
    ids, mask = prompts(model)
    backend = HFBackend(model, SAMPLING, max_new_tokens=4, decode="fast")
    out = backend.generate(Prompts(ids, mask), ["speaker"] * 4, None, torch.tensor([1, 2, 3, 4]))
    assert config._attn_implementation == "sdpa"
    assert torch.float32 in calls and torch.bfloat16 in calls  # decode steps in float32, the prompt not
    assert out.response_ids.shape[0] == 4 and torch.isfinite(out.logprobs).all()
    with float32_decode_attention(make_team_model().policy) as switched:
        assert switched == 0  # a float32 model is left as it is
