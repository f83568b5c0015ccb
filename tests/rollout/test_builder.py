"""The trajectory builder: what the collector tells it, in order, becomes the trajectory's
tensors, with each column padded by the fill declared beside it."""

import torch

from marft.envs.base import Observation
from marft.rollout.builder import ActionRows, TrajectoryBuilder
from marft.rollout.episodes import LiveEpisodes

PAD = 7


def rows(n: int, prompt: int, response: int, start: float) -> ActionRows:
    """``n`` actions with prompts of ``prompt`` tokens and responses of ``response`` tokens."""
    return ActionRows(
        prompt_ids=torch.full((n, prompt), 3),
        prompt_mask=torch.ones(n, prompt, dtype=torch.long),
        response_ids=torch.full((n, response), 4),
        response_mask=torch.ones(n, response, dtype=torch.long),
        logprobs=torch.arange(n * response, dtype=torch.float32).reshape(n, response) + start,
        entropy=torch.ones(n, response),
        word_counts=torch.full((n,), 2.0),
    )


def test_actions_of_one_step_in_two_calls_merge_and_missing_rows_are_padding():
    buf = TrajectoryBuilder(B=3, steps=2, N=2, pad_id=PAD, device=torch.device("cpu"))
    assert buf.begin_step(0) == 0
    buf.call = 0
    buf.record_action(0, 0, [0, 2], rows(2, prompt=2, response=1, start=10.0))
    buf.call = 1
    buf.record_action(0, 0, [1], rows(1, prompt=3, response=2, start=20.0))  # wider: both are padded
    buf.record_action(1, 0, [1], rows(1, prompt=1, response=1, start=30.0))
    buf.close_steps({0: 0, 1: 0, 2: 0})
    buf.end_step(0, 0, [(0, 0)], [1.0], 1.0)
    buf.end_step(1, 0, [(0, 0), (0, 1)], [0.5, 0.25], 0.75)
    buf.end_episode(1, 0, episode_return=0.75, length=1)
    traj = buf.build(per_agent_rewards=False, cut_prompts=None, next_prompts=None, env_metrics={})
    first = traj.agents[0]
    # rows b * T + t with T = 1 step taken; prompts are left-padded, responses right-padded
    assert first.prompt_ids.tolist() == [[PAD, 3, 3], [3, 3, 3], [PAD, 3, 3]]
    assert first.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1], [0, 1, 1]]
    assert first.response_ids.tolist() == [[4, PAD], [4, 4], [4, PAD]]
    assert first.logprobs.tolist() == [[10.0, 0.0], [20.0, 21.0], [11.0, 0.0]]
    second = traj.agents[1]
    assert second.response_mask.tolist() == [[0], [1], [0]] and second.word_counts.tolist() == [1.0, 2.0, 1.0]
    assert traj.turns[:, 0].tolist() == [[0, -1], [1, 1], [0, -1]]
    assert traj.rewards[:, 0].tolist() == [[1.0, 0.0], [0.5, 0.25], [0.0, 0.0]]
    assert traj.action_mask[:, 0].tolist() == [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    assert traj.team_rewards.tolist() == [[1.0], [0.75], [0.0]]
    assert traj.dones.tolist() == [[0.0], [1.0], [0.0]] and traj.episode_returns == [0.75]
    assert traj.step_ends.tolist() == [[1.0], [1.0], [0.0]]


def test_an_agent_that_did_not_act_at_early_steps_is_padded_up_to_them():
    buf = TrajectoryBuilder(B=1, steps=3, N=2, pad_id=PAD, device=torch.device("cpu"))
    buf.record_action(1, 2, [0], rows(1, prompt=1, response=1, start=5.0))
    buf.close_steps({0: 2})
    buf.drop_episode(0, 2)
    buf.cut(0, 1, Observation("next"))
    traj = buf.build(per_agent_rewards=True, cut_prompts=None, next_prompts=None, env_metrics={"x": 1.0})
    assert traj.agents[1].response_ids.tolist() == [[PAD], [PAD], [4]]
    assert traj.agents[0].response_ids.tolist() == [[PAD], [PAD], [PAD]]
    assert traj.failed_episodes == 1 and traj.dones.tolist() == [[0.0, 0.0, 1.0]]
    assert traj.truncated.tolist() == [[0.0, 1.0, 0.0]] and traj.cut_index.tolist() == [[0, 1]]
    assert buf.cut_observations[0].text == "next" and traj.env_metrics == {"x": 1.0}


def test_live_episodes_count_steps_restart_and_round_trip():
    episodes = LiveEpisodes.start([Observation("a"), Observation("b")])
    episodes.add_step(1, 0.5, {"step": 0})
    episodes.add_step(1, 0.25, None)
    assert (
        episodes.returns == [0.0, 0.75] and episodes.lengths == [0, 2] and episodes.turns[1] == [{"step": 0}]
    )
    again = LiveEpisodes.start([Observation("x"), Observation("y")])
    again.load_state_dict(episodes.state_dict())
    assert again == episodes
    episodes.restart(1, Observation("c"))
    assert episodes.returns[1] == 0.0 and episodes.lengths[1] == 0 and episodes.turns[1] == []
    assert episodes.observations[1].text == "c"
