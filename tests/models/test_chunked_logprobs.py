"""Chunked log-probs and entropies equal the unchunked computation, values and gradients."""

import pytest
import torch

from marft.models import SamplingParams, SequenceBatch
from marft.models.logprobs import chunked_token_logprobs, warp_logits
from tests.conftest import make_team_model


def reference(hidden, tokens, mask, head, sampling):
    """The straightforward computation: logits of every position at once (the pre-chunking code)."""
    logits = warp_logits(head(hidden), sampling)  # [S, L, V]
    logp_all = logits.log_softmax(-1)
    lp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    p = logp_all.exp()
    ent = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)
    real = mask.bool()
    return torch.where(real, lp.clamp(min=-1e4), 0.0), torch.where(real, ent, 0.0)


def setup(seed=0, S=3, L=7, H=16, V=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(S, L, H, generator=g, requires_grad=True)
    head = torch.nn.Linear(H, V)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
        head.bias.copy_(torch.randn(V, generator=g))
    tokens = torch.randint(0, V, (S, L), generator=g)
    mask = torch.ones(S, L, dtype=torch.long)
    mask[0, 5:] = 0  # ragged responses: padding never reaches the head
    mask[2, 2:] = 0
    return hidden, tokens, mask, head


@pytest.mark.parametrize("chunk", [1, 3, 4, 0])
@pytest.mark.parametrize(
    "warp", [SamplingParams(), SamplingParams(0.7, 5, 1.0), SamplingParams(0.5, 0, 0.8)], ids=str
)
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunked_equals_unchunked_values_and_gradients(chunk, warp, entropy_grad):
    hidden, tokens, mask, head = setup()
    head.weight.requires_grad_(True)  # a trainable output layer (modules_to_save) gets its gradient too
    lp_ref, ent_ref = reference(hidden, tokens, mask, head, warp)
    # a loss that weighs each token differently, so a misplaced gradient cannot cancel out
    w = torch.linspace(0.5, 2.0, tokens.numel()).reshape(tokens.shape)
    loss_ref = (lp_ref * w).sum() + (ent_ref * w.flip(0)).sum() * float(entropy_grad)
    g_hidden_ref, g_head_ref = torch.autograd.grad(loss_ref, [hidden, head.weight])

    lp, ent = chunked_token_logprobs(
        hidden, tokens, mask, head, warp, chunk, entropy=True, entropy_grad=entropy_grad
    )
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=1e-5)
    assert ent.requires_grad == entropy_grad
    loss = (lp * w).sum() + (ent * w.flip(0)).sum() * float(entropy_grad)
    g_hidden, g_head = torch.autograd.grad(loss, [hidden, head.weight])
    torch.testing.assert_close(g_hidden, g_hidden_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_head, g_head_ref, atol=1e-5, rtol=1e-4)
    assert g_hidden[0, 5:].abs().sum() == 0 and g_hidden[2, 2:].abs().sum() == 0  # padding: no gradient


def test_no_logits_beyond_a_chunk_are_kept_for_the_backward():
    """With a gradient, what autograd saves does not grow with the number of tokens x vocabulary:
    each chunk's logits are recomputed in the backward."""
    saved = []

    def count(t):
        saved.append(t.numel())
        return t

    hidden, tokens, mask, head = setup(S=4, L=32, V=4000)
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        chunked_token_logprobs(hidden, tokens, mask, head, SamplingParams(), chunk_tokens=8, entropy=True)
    assert max(saved) < 8 * 4000  # nothing vocabulary-sized for more than one chunk
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        reference(hidden, tokens, mask, head, SamplingParams())
    assert max(saved) >= int(mask.sum()) * 4000  # the unchunked computation keeps them all


def test_no_grad_mode_builds_no_graph():
    hidden, tokens, mask, head = setup()
    with torch.no_grad():
        lp, ent = chunked_token_logprobs(hidden, tokens, mask, head, SamplingParams(), 2, entropy=True)
    assert not lp.requires_grad and not ent.requires_grad
    lp_ref, ent_ref = reference(hidden.detach(), tokens, mask, head, SamplingParams())
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=1e-5)


def test_team_model_logprobs_and_gradients_do_not_depend_on_the_chunk_size():
    """The whole model path: action log-probs, entropies and adapter gradients with chunks of 3
    tokens equal those with no chunking; reference log-probs too."""
    model = make_team_model()
    g = torch.Generator().manual_seed(0)
    V = model.policy.get_base_model().get_output_embeddings().weight.shape[0]
    batch = SequenceBatch(
        torch.randint(3, V, (3, 6), generator=g),
        torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 1, 1, 1, 1, 1]]),
        torch.randint(3, V, (3, 5), generator=g),
        torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]]),
    )
    results = []
    sampling = SamplingParams(temperature=0.8, top_k=20)
    for chunk in (0, 3):
        model.logit_chunk_tokens = chunk
        params = model.adapter_parameters("speaker")
        with model.adapter("speaker"):
            lp, ent = model.action_logprobs(batch, sampling, entropy_grad=True)
            grads = torch.autograd.grad((lp.sum() + ent.sum()), params)
        _, ref = model.score_reference(batch, "none", True, sampling)
        results.append((lp.detach(), ent.detach(), grads, ref))
    (lp0, ent0, g0, ref0), (lp3, ent3, g3, ref3) = results
    torch.testing.assert_close(lp3, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent3, ent0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref3, ref0, atol=1e-5, rtol=1e-5)
    for a, b in zip(g3, g0, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in g0)


def test_gradient_checkpointing_gives_the_same_gradients():
    """``model.gradient_checkpointing`` recomputes layers in the backward: same log-probs, same
    adapter gradients; the frozen base still gets none."""
    from marft.config import LoraSettings, ModelConfig, TinyModelConfig
    from marft.models import TeamModel, load_base
    from tests.conftest import CORPUS

    results = []
    for checkpointing in (False, True):
        base, tok = load_base(ModelConfig(name="tiny", tiny=TinyModelConfig(seed=0)), CORPUS)
        lora = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
        torch.manual_seed(0)  # the same LoRA initialisation in both models
        model = TeamModel(base, tok, ["agent"], lora, gradient_checkpointing=checkpointing)
        with torch.no_grad():
            for p in model.adapter_parameters("agent"):
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        g = torch.Generator().manual_seed(1)
        V = tok.vocab_size
        batch = SequenceBatch(
            torch.randint(3, V, (2, 5), generator=g),
            torch.tensor([[0, 1, 1, 1, 1], [1] * 5]),
            torch.randint(3, V, (2, 4), generator=g),
            torch.tensor([[1, 1, 1, 0], [1] * 4]),
        )
        layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
        assert layers and all(m.gradient_checkpointing == checkpointing for m in layers)
        with model.adapter("agent"):
            model.policy.train()
            lp, _ = model.action_logprobs(batch, SamplingParams())
            lp.sum().backward()
        assert all(p.grad is None for _, p in model.base_parameters())
        results.append((lp.detach(), [p.grad.clone() for p in model.adapter_parameters("agent")]))
    (lp0, g0), (lp1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-6, rtol=1e-5)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in g0)
