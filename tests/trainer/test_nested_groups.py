"""Nested (tree) groups for Flex-MG: only branch leaders generate, and each depth's actions are
credited against their sibling subtrees."""

import math

import pytest
import torch

from marft.algorithms import grpo_advantages
from marft.algorithms.estimators import last_answers
from marft.algorithms.group_baselines import answer_changes, nested_advantages
from marft.compose import load_config
from marft.config import ConfigError
from marft.rollout.nested import NestedGroups
from marft.trainer import Trainer
from tests.conftest import write_tiny_config

PLANNER = {"role": "planner", "system_prompt": "plan", "max_new_tokens": 3}
SOLVER = {"role": "solver", "system_prompt": "answer", "graded": True}
MATH = {"name": "math", "n_envs": 8, "horizon": 1, "kwargs": {"data": "arithmetic", "arith_count": 100}}


def test_nested_advantages_by_hand():
    """Branching [2, 2]: plan A's answers return 1 and 0, plan B's 1 and 1.

    dr_grpo: plan means 0.5 and 1 (mean 0.75): A -0.25, B +0.25 on both rows of each subtree;
    answers against their sibling: +-0.5 under A, 0 under B. grpo divides by the unbiased std of
    the compared values: sqrt(2 * 0.25^2) = 0.3536 for the plans, 0.7071 for A's answers."""
    returns = torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv, moved = nested_advantages(returns, [0, 1], [2, 2], "dr_grpo")
    torch.testing.assert_close(adv[:, 0], torch.tensor([-0.25, -0.25, 0.25, 0.25]))
    torch.testing.assert_close(adv[:, 1], torch.tensor([0.5, -0.5, 0.0, 0.0]))
    assert moved == [1.0, 0.5]
    adv, _ = nested_advantages(returns, [0, 1], [2, 2], "grpo")
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(adv[:, 0], torch.tensor([-r, -r, r, r]), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv[:, 1], torch.tensor([r, -r, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_one_level_of_branching_is_plain_grpo():
    """Branching [G] for a one-depth team: every action against its group."""
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    adv, _ = nested_advantages(returns, [0, 0], [4], "grpo")
    torch.testing.assert_close(adv[:, 0], grpo_advantages(returns, 4))
    torch.testing.assert_close(adv[:, 1], adv[:, 0])


def test_answer_changes_by_hand():
    """Branching [2, 2]: group 0 plan A answers 5, 5 and plan B 7, 5; group 1 plan A 3, 4 and
    plan B a dropped rollout (-1) and 4.

    Across plans (pairs with one row in each subtree): group 0 (5,7) (5,5) (5,7) (5,5): 2 of 4
    differ; group 1 (3,4) (4,4), the dropped row's pairs left out: 1 of 2. Across: 3 / 6 = 0.5.
    Within one plan: group 0 (5,5) same, (7,5) differ; group 1 (3,4) differ: 2 / 3."""
    answers = torch.tensor([5, 5, 7, 5, 3, 4, -1, 4])
    [(across, within)] = answer_changes(answers, [2, 2])
    assert across == pytest.approx(0.5)
    assert within == pytest.approx(2 / 3)
    # one plan per problem: no pair across plans
    [(across, within)] = answer_changes(torch.tensor([1, 1, 2, 2]), [1, 4])
    assert math.isnan(across) and within == pytest.approx(4 / 6)


def test_answer_changes_equal_a_loop_over_pairs():
    branching = [2, 3, 2]
    g = torch.Generator().manual_seed(0)
    answers = torch.randint(-1, 3, (3 * 12,), generator=g)
    got = answer_changes(answers, branching)
    for d in range(len(branching) - 1):
        parent, s = math.prod(branching[d:]), math.prod(branching[d + 1 :])
        counts = {True: [0, 0], False: [0, 0]}  # across? -> [differing pairs, pairs]
        for i in range(len(answers)):
            for j in range(len(answers)):
                if i == j or i // parent != j // parent or answers[i] < 0 or answers[j] < 0:
                    continue
                across = (i % parent) // s != (j % parent) // s
                counts[across][0] += int(answers[i] != answers[j])
                counts[across][1] += 1
        across, within = (counts[True][0] / counts[True][1], counts[False][0] / counts[False][1])
        assert got[d] == pytest.approx((across, within))


def test_last_answers_takes_each_rollouts_last_step():
    answers = torch.tensor([[4, 9, -1], [-1, -1, -1], [2, -1, 6]])
    assert last_answers(answers).tolist() == [9, -1, 6]


def test_leaders_of_each_depth():
    tree = NestedGroups((2, 3))  # groups of 6: 2 plans, 3 answers each
    assert [tree.leader(b, 0) for b in range(12)] == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9]
    assert [tree.leader(b, 1) for b in range(6)] == list(range(6))
    # a rollout worker whose slice starts at a group boundary
    assert NestedGroups((2, 3), env_offset=6).leader(4, 0) == 3


def nested_trainer(tmp_path, **algorithm):
    path = write_tiny_config(
        tmp_path / "team.yaml",
        [PLANNER, SOLVER],
        MATH,
        sampling={"max_new_tokens": 4},
        algorithm={
            "name": "grpo",
            "group_size": 4,
            "ppo_epochs": 1,
            "group_baseline": "nested",
            "branching": [2, 2],
            **algorithm,
        },
    )
    trainer = Trainer(load_config(str(path), []), tmp_path / "run")
    trainer.setup()
    return trainer


def test_only_branch_leaders_generate_and_copies_see_the_leaders_plan(tmp_path):
    trainer = nested_trainer(tmp_path)
    backend = trainer.parts.backend
    calls = []
    generate = backend.generate
    backend.generate = lambda prompts, adapters, *a: (
        calls.append(list(adapters)) or generate(prompts, adapters, *a)
    )
    traj = trainer.parts.sampler.collect(trainer.steps_per_rollout)
    assert calls == [["planner"] * 4, ["solver"] * 8]  # 2 groups x 2 plans, then every copy answers
    planner, solver = traj.agents
    leaders = torch.tensor([b % 2 == 0 for b in range(8)])
    assert torch.equal(traj.action_mask[:, 0, 0].bool(), leaders)
    assert traj.action_mask[:, 0, 1].bool().all()
    assert planner.response_mask[~leaders].sum() == 0  # copies generated nothing
    # a copy's solver prompt is its leader's: the same problem and the same plan
    for b in range(1, 8, 2):
        assert torch.equal(solver.prompt_ids[b], solver.prompt_ids[b - 1])
    assert not torch.equal(solver.prompt_ids[0], solver.prompt_ids[4])  # another group's problem


def test_nested_groups_train_and_report_each_depths_effect(tmp_path):
    trainer = nested_trainer(tmp_path)
    traj = trainer.parts.sampler.collect(trainer.steps_per_rollout)
    scores = trainer.parts.scorer.score(traj)
    learner = trainer.parts.learner
    targets = learner.targets(traj, scores)
    returns = traj.team_rewards.sum(1)
    want, _ = nested_advantages(returns, [0, 1], [2, 2], "grpo")
    planner = targets.agents[0]
    # the planner trains on its leaders' rows only, with its subtree's advantage
    assert torch.equal(planner.sample_mask.bool(), traj.action_mask[:, 0, 0].bool())
    torch.testing.assert_close(planner.advantages[planner.sample_mask > 0], want[::2, 0])
    torch.testing.assert_close(targets.agents[1].advantages, want[:, 1])
    result = learner.update(traj, scores, 0)
    assert {"nested_effect/depth0", "nested_effect/depth1"} <= set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    # the graded agent's extracted answers: a plan's effect on them against the solver's own noise
    assert traj.answers.shape == traj.team_rewards.shape and bool((traj.answers >= 0).all())
    want_changes = answer_changes(last_answers(traj.answers), [2, 2])
    assert result.metrics["answer_change/depth0"] == pytest.approx(want_changes[0][0])
    assert result.metrics["answer_change_within/depth0"] == pytest.approx(want_changes[0][1])
    assert "answer_change/depth1" not in result.metrics


@pytest.mark.parametrize(
    "algorithm, match",
    [
        ({"branching": [2, 4]}, "algorithm.branching: the product of \\[2, 4\\] must equal group_size=4"),
        ({"branching": [4]}, "algorithm.branching: give one branching factor per depth"),
        ({"branching": []}, "algorithm.branching: group_baseline=nested needs"),
        ({"name": "appo", "branching": [2, 2]}, "algorithm.group_baseline: only group-relative"),
    ],
)
def test_nested_config_errors(tmp_path, algorithm, match):
    path = write_tiny_config(
        tmp_path / "team.yaml",
        [PLANNER, SOLVER],
        MATH,
        algorithm={"name": "grpo", "group_size": 4, "group_baseline": "nested", **algorithm},
    )
    with pytest.raises(ConfigError, match=match):
        Trainer(load_config(str(path), []), tmp_path / "run").setup()
