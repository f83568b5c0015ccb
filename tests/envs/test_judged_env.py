"""The judged env: rule checks, task files, the reward formula, batched judging across copies."""

import json

import pytest

from marft.compose import env_capabilities, load_config, make_env
from marft.config import AgentConfig, ConfigError, TeamConfig
from marft.envs.base import summarize_metrics
from marft.envs.copies import step_all
from marft.envs.judged import Rules, check_rules, count_words, load_tasks, split_slides
from marft.envs.judged.rules import repeated_share
from marft.team import TeamGraph

DECK = """## Why sleep matters
- Memory is stored during deep sleep
- Teens need 8 to 10 hours

## What breaks it
- Screens late at night
- Caffeine after noon

## What helps
- A fixed bedtime
- A dark, cool room
"""


def team():
    agents = [AgentConfig(role="outliner"), AgentConfig(role="writer", graded=True)]
    return TeamGraph.from_config(TeamConfig(agents=agents))


class FakeJudge:
    """Scores by a fixed table (the response's first word) and records each call's size."""

    pairwise = False

    def __init__(self, table, prefix="judge"):
        self.table, self.calls, self.prefix = table, [], prefix

    def score(self, requests):
        self.calls.append(len(requests))
        return [self.table.get(r.response.split()[0] if r.response.split() else "", 0.0) for r in requests]

    def pop_metrics(self):
        return {f"{self.prefix}_calls": float(sum(self.calls))}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_well_formed_deck_keeps_every_rule():
    rules = Rules(slides=3, min_bullets=2, max_bullets=4, max_words=60)
    assert [t for t, _ in split_slides(DECK)] == ["Why sleep matters", "What breaks it", "What helps"]
    assert check_rules(DECK, rules) == {"max_words": True, "slides": True, "titles": True, "bullets": True}


@pytest.mark.parametrize(
    "text, broken",
    [
        (DECK.replace("## ", ""), {"slides", "titles", "bullets"}),  # no headings: no slides at all
        (DECK + "\n## Extra\n- one more\n- two more\n", {"slides"}),  # four slides, three asked
        (DECK.replace("- A dark, cool room", "- A dark room\n- Quiet\n- No phone\n- Cool air"), {"bullets"}),
        (DECK.replace("## What helps", "##"), {"titles"}),  # an untitled slide
        (DECK + " word" * 60, {"max_words"}),
        ("Sure! Here is your deck: sleep is good.", {"slides", "titles", "bullets"}),
    ],
)
def test_a_format_breaking_response_fails_the_rule_checks(text, broken):
    result = check_rules(text, Rules(slides=3, min_bullets=2, max_bullets=4, max_words=60))
    assert {k for k, ok in result.items() if not ok} == broken


def test_a_bullet_padded_with_filler_breaks_the_bullet_length_rule_and_repeats_are_measured():
    rules = Rules(slides=3, max_bullet_words=8)
    assert check_rules(DECK, rules)["bullet_words"]
    padded = DECK.replace(
        "- A dark, cool room", "- A dark, cool room, which many people find really important"
    )
    assert check_rules(padded, rules)["bullet_words"] is False
    assert repeated_share(DECK) == 0.0
    twice = "\n".join(f"{line}\n{line}" if line.startswith("- ") else line for line in DECK.splitlines())
    assert 0.2 < repeated_share(twice) < 0.5  # every bullet written twice (short bullets: 15 of 58)
    assert repeated_share("a b c a b c") == 1 / 4  # trigrams abc bca cab abc: the last repeats


def test_words_required_and_forbidden_text():
    assert count_words("## Title\n- two words") == 3  # markdown marks are not words
    assert split_slides("#hashtag line\n# 1 tip\n- a") == [("1 tip", ["- a"])]  # "#hashtag" is no heading
    rules = Rules(min_words=3, required=["Limitations"], forbidden=["great question"])
    assert check_rules("Answer: yes. limitations: cost.", rules) == {
        "min_words": True,
        "required": True,
        "forbidden": True,
    }
    assert check_rules("Great question!", rules) == {
        "min_words": False,
        "required": False,
        "forbidden": False,
    }
    assert Rules().empty and not Rules(max_words=3).empty


def test_the_built_in_task_sets_load_with_both_splits():
    for name in ("research", "slides"):
        train, heldout = load_tasks(name, "train"), load_tasks(name, "heldout")
        assert len(train) == 24 and len(heldout) == 16
        assert not {t.prompt for t in train} & {t.prompt for t in heldout}  # held-out prompts are unseen
    assert all(t.rules.slides in (3, 4) and t.rules.titles for t in load_tasks("slides"))
    assert all(t.rules.required == ["limitation"] for t in load_tasks("research"))


def test_task_file_errors_name_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "p", "rubric": "r", "rules": {"max_slides": 3}}) + "\n")
    with pytest.raises(ConfigError, match=r"line 1: unknown rule \['max_slides'\]"):
        load_tasks(str(path))
    path.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ConfigError, match="line 1 needs text in rubric"):
        load_tasks(str(path))
    path.write_text(json.dumps({"prompt": "p", "rubric": "r", "rules": {"max_words": -1}}) + "\n")
    with pytest.raises(ConfigError, match="rules.max_words must be a non-negative"):
        load_tasks(str(path))
    with pytest.raises(ConfigError, match="splits train, heldout"):
        load_tasks("slides", "test")


def test_pairwise_judging_needs_a_reference_in_every_task():
    with pytest.raises(
        ConfigError, match="reward.judge.mode: pairwise judging compares with each task's reference"
    ):
        load_config("slides_team", ["model.name=tiny", "reward.judge.mode=pairwise"])
    with pytest.raises(ConfigError, match="reward.heldout_judge.mode: pairwise judging compares"):
        load_config("slides_team", ["model.name=tiny", "reward.heldout_judge.mode=pairwise"])


def test_judge_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^env.kwargs.data: task file"):
        load_config("slides_team", ["model.name=tiny", f"env.kwargs.data={tmp_path}/missing.jsonl"])
    with pytest.raises(ConfigError, match=r"^env.kwargs.length_penalty: must be >= 0"):
        load_config("slides_team", ["model.name=tiny", "env.kwargs.length_penalty=-1"])
    with pytest.raises(ConfigError, match=r"^reward.judge.template: may use only"):
        load_config("slides_team", ["model.name=tiny", "reward.judge.template='{max_score'"])
    with pytest.raises(ConfigError, match="required: must be a list of strings"):
        Rules(required="limitation")


def test_the_reward_formula_and_one_judge_call_for_all_copies(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "rubric": "r", "rules": {"max_words": 4, "required": ["b"]}}) + "\n"
    )
    kwargs = {"data": str(path), "judge_weight": 2.0, "rules_weight": 0.5, "length_penalty": 0.25}
    envs = [make_env("judged", kwargs, team()) for _ in range(3)]
    judge, held = FakeJudge({"a": 0.8, "x": 0.4}), FakeJudge({"a": 0.1}, "heldout_judge")
    for i, env in enumerate(envs):
        env.bind_judge(judge, held, owner=i == 0)
        env.reset(seed=i)
    actions = [
        {"outliner": "ignored", "writer": "a b"},  # both rules kept: 2*0.8 + 0.5*1
        {"outliner": "ignored", "writer": "x y z w v u v w"},  # 8 words: 2*0.4 + 0 - 0.25*(8/4 - 1)
        {"outliner": "a b"},  # the writer did not act: nothing judged, score 0, rules fail
    ]
    results = step_all(envs, actions, env_capabilities("judged"))
    assert judge.calls == [2] and held.calls == [2]  # one batched call of each judge for all copies
    assert [r.rewards for r in results] == pytest.approx([1.6 + 0.5, 0.8 - 0.25, 0.0])
    assert [r.correct for r in results] == [True, False, False]
    assert results[0].info["metrics"] == {
        "judge_score": 0.8,
        "rules_pass": 1.0,
        "response_words": 2.0,
        "heldout_score": 0.1,
    }
    counters = {}
    for env in envs:
        for k, v in env.pop_metrics().items():
            counters[k] = counters.get(k, 0.0) + v
    row = summarize_metrics(counters)
    assert row["judge_score"] == pytest.approx((0.8 + 0.4 + 0.0) / 3)
    # the copy with no response scores 0 with both judges: both means are over the same copies
    assert results[2].info["metrics"]["heldout_score"] == 0.0 and row["heldout_score"] == pytest.approx(
        0.1 / 3
    )
    assert row["graded_missing"] == 1.0
    assert row["judge_calls"] == 2.0  # counted once (by the owner copy), not once per copy


def test_rules_gate_withholds_the_judge_score_from_a_broken_format(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "p", "rubric": "r", "rules": {"slides": 1}}) + "\n")
    env = make_env("judged", {"data": str(path), "rules_gate": True, "rules_weight": 0.0}, team())
    env.bind_judge(FakeJudge({"a": 0.9, "##": 0.9}))
    env.reset(seed=0)
    assert env.step({"writer": "a flattering essay"}).rewards == 0.0
    env.reset(seed=0)
    assert env.step({"writer": "## a slide\n- point"}).rewards == pytest.approx(0.9)
