"""Two things a team-versus-one-agent comparison relies on: every row meets the same problems, and
a group-relative step sees whole groups."""

import pytest
import torch

from marft.compose import load_config
from marft.learner.batching import PolicyBatch
from marft.rollout.streams import env_stream, problem_stream
from marft.trainer import Trainer
from tests.conftest import collect_scored, small_config, write_tiny_config

MATH = {"name": "math", "n_envs": 4, "horizon": 1, "kwargs": {"data": "arithmetic", "arith_count": 500}}
PLANNER = {"role": "planner", "system_prompt": "plan", "max_new_tokens": 3}
SOLVER = {"role": "solver", "system_prompt": "answer", "graded": True}


def problems_met(tmp_path, name: str, agents: list[dict], iterations: int = 3) -> list[int]:
    """The problem index of every env copy's episode over ``iterations`` collections."""
    path = write_tiny_config(
        tmp_path / f"{name}.yaml",
        agents,
        MATH,
        sampling={"max_new_tokens": 4},
        algorithm={"name": "grpo", "group_size": 2, "ppo_epochs": 1},
    )
    trainer = Trainer(load_config(str(path), []), tmp_path / name)
    trainer.setup()
    met = []
    for _ in range(iterations):
        trainer.parts.sampler.collect(trainer.steps_per_rollout)
        met.extend(env.index for env in trainer.parts.envs)  # the episode's problem (ProblemEpisodes)
    return met


def test_a_team_and_one_agent_meet_the_same_problems(tmp_path):
    """Resets draw from a stream of their own: the team's extra samples (the planner's keys) do
    not move the problems, so a team and one agent with one seed train on the same sequence."""
    team = problems_met(tmp_path, "team", [PLANNER, SOLVER])
    single = problems_met(tmp_path, "single", [SOLVER])
    assert team == single
    assert len(set(team)) > 2  # really several problems (groups of 2 share one)
    assert all(team[i] == team[i + 1] for i in range(0, len(team), 2))


def test_problem_and_sampling_streams_differ():
    assert problem_stream(0, 3).getrandbits(63) != env_stream(0, 3).getrandbits(63)
    assert problem_stream(0, 3).getrandbits(63) == problem_stream(0, 3).getrandbits(63)


def grpo_trainer(tmp_path, *overrides: str) -> Trainer:
    cfg = small_config(
        "algorithm.name=grpo",
        "algorithm.group_size=4",
        "env.n_envs=16",
        "algorithm.num_minibatches=3",
        "algorithm.ppo_epochs=2",
        *overrides,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    return trainer


def test_minibatches_keep_groups_whole(tmp_path):
    """Each epoch is a partition of the rows into minibatches of whole groups (4 groups of 4 rows
    in 3 minibatches: 2, 1 and 1 groups), every agent's rows of a group in the same one."""
    trainer = grpo_trainer(tmp_path)
    learner = trainer.parts.learner
    traj, scores = collect_scored(trainer, 1)
    targets = learner.targets(traj, scores)
    batch = PolicyBatch.merge([learner._policy_batch(traj, scores, targets, n) for n in (0, 1)])
    assert batch.groups.tolist() == [b // 4 for b in range(16)] * 2
    plans = learner.policy._minibatches(batch)
    assert len(plans) == 2 * 3
    for epoch in (plans[:3], plans[3:]):
        rows = torch.cat(epoch)
        assert sorted(rows.tolist()) == list(range(32))  # every row once per epoch
        assert sorted(len(mb) for mb in epoch) == [8, 8, 16]
        for mb in epoch:
            groups = set(batch.groups[mb].tolist())
            assert len(mb) == 8 * len(groups)  # whole groups: 4 env copies x 2 agents each


@pytest.mark.parametrize("flag", ["algorithm.minibatch_groups=false", "algorithm.name=appo"])
def test_rows_are_drawn_one_by_one_without_groups(tmp_path, flag):
    trainer = grpo_trainer(tmp_path, flag)
    learner = trainer.parts.learner
    traj, scores = collect_scored(trainer, 1)
    batch = learner._policy_batch(traj, scores, learner.targets(traj, scores), 0)
    assert batch.groups is None
    sizes = sorted(len(mb) for mb in learner.policy._minibatches(batch)[:3])
    assert sizes == [4, 6, 6]  # torch.chunk of 16 rows in 3
