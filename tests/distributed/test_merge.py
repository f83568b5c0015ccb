"""Per-env-copy random streams: env-copy slices collected apart and merged give, tensor for
tensor, what one collector over all env copies gives (what makes K rollout workers equal to one)."""

import pytest
import torch

from marft.compose import build_collector, build_envs, build_training, load_config, resolve
from marft.rollout.merge import join_collector_states, merge_trajectories, split_collector_state
from marft.rollout.streams import keyed_uniform, sample_keyed

COMMON = ["env.n_envs=8", "run.torch_threads=1", "run.progress=false"]


def test_keyed_sampling_depends_on_the_key_and_counter_only():
    keys = torch.tensor([3, 2**40 + 5, 2**62 - 1, 17])
    u = keyed_uniform(keys, 7)
    assert torch.equal(u[[1, 3]], keyed_uniform(keys[[1, 3]], 7))  # another batch: the same draws
    assert not torch.equal(u, keyed_uniform(keys, 8))
    assert ((u >= 0) & (u < 1)).all()
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75]]).repeat(4, 1)
    # inverse CDF: u < 0.25 -> token 1, else token 3; zero-probability tokens are never drawn
    want = torch.where(u < 0.25, 1, 3)
    assert torch.equal(sample_keyed(probs, u), want)
    assert sample_keyed(probs[:1], torch.tensor([0.0])).item() == 1


def test_keyed_sampling_follows_the_distribution():
    keys = torch.randint(0, 2**62, (40000,), generator=torch.Generator().manual_seed(0))
    probs = torch.tensor([0.1, 0.6, 0.3]).repeat(len(keys), 1)
    freq = torch.bincount(sample_keyed(probs, keyed_uniform(keys, 0)), minlength=3) / len(keys)
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3]), atol=0.01, rtol=0)


def _trajectories(overrides, slices, steps):
    """One collector over all env copies, and one per slice, on one shared model."""
    resolved = resolve(load_config("demo", COMMON + overrides))
    parts = build_training(resolved)
    whole = parts.sampler
    pieces = []
    for lo, hi in slices:
        envs = build_envs(resolved, hi - lo)
        pieces.append(build_collector(resolved, envs, parts.model.tokenizer, parts.backend, env_offset=lo))
    pad = parts.model.tokenizer.pad_token_id
    out = []
    for _ in range(2):  # two calls: the second continues the first's episodes and streams
        full = whole.collect(steps)
        merged = merge_trajectories([c.collect(steps) for c in pieces], [lo for lo, _ in slices], pad)
        out.append((full, merged))
    return whole, pieces, out


@pytest.mark.parametrize(
    "overrides, slices, steps",
    [
        ([], [(0, 3), (3, 8)], 1),  # APPO, continuing, uneven slices
        (["env.kwargs.rounds=2", "env.horizon=1"], [(0, 4), (4, 8)], 2),  # horizon cuts
        (["algorithm.name=grpo", "algorithm.group_size=4"], [(0, 4), (4, 8)], 3),  # groups, episodic
    ],
    ids=["appo", "horizon_cuts", "grpo"],
)
def test_slices_merged_equal_one_collector(overrides, slices, steps):
    whole, pieces, calls = _trajectories(overrides, slices, steps)
    for full, merged in calls:
        assert full.shape == merged.shape
        for name in ("rewards", "team_rewards", "dones", "action_mask", "turns", "truncated", "cut_index"):
            assert torch.equal(getattr(full, name), getattr(merged, name)), name
        for a, b in zip(full.agents, merged.agents, strict=True):
            for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "word_counts"):
                assert torch.equal(getattr(a, name), getattr(b, name)), name
            # another batch may round the forward differently: log-probs agree to float precision
            torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
        for name in ("cut_prompts", "next_prompts"):
            x, y = getattr(full, name), getattr(merged, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert torch.equal(x.ids, y.ids) and torch.equal(x.mask, y.mask), name
        assert sorted(full.episode_returns) == sorted(merged.episode_returns)
        assert full.failed_episodes == merged.failed_episodes
    # the collector states of the slices, joined, are the whole collector's; and split back
    joined = join_collector_states([c.state_dict() for c in pieces])
    state = whole.state_dict()
    assert joined["streams"] == state["streams"] and joined["obs"] == state["obs"]
    assert joined["ep_return"] == state["ep_return"]
    back = split_collector_state(joined, slices)
    assert [len(s["streams"]) for s in back] == [hi - lo for lo, hi in slices]
