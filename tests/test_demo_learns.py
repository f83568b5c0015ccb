"""End to end on the built-in demo: the team learns to cooperate, and cannot without its dependency."""

import json
import statistics

from marft.compose import load_config
from marft.trainer import train


def returns(result):
    return [r["episode_return"] for r in result.rows]


def test_demo_team_learns_to_cooperate(tmp_path):
    cfg = load_config("demo", ["run.progress=false", "run.loggers=[]"])
    result = train(cfg, tmp_path / "demo")
    r = returns(result)
    assert statistics.mean(r[:3]) < 0.4  # starts at or below chance (1/3)
    assert statistics.mean(r[-5:]) >= 0.9, r
    # The listener's answers follow the speaker's messages: check a transcript of the end.
    last = [json.loads(x) for x in (tmp_path / "demo" / "transcripts.jsonl").read_text().splitlines()][-1]
    turn = last["turns"][0]
    assert turn["info"]["answer"] == turn["info"]["secret"]


def test_without_the_dependency_the_team_stays_at_chance(tmp_path):
    cfg = load_config(
        "demo",
        ["run.progress=false", "run.loggers=[]", "team.agents.1.observes=[]", "run.iterations=60"],
    )
    result = train(cfg, tmp_path / "nodep")
    r = returns(result)
    # The listener still learns to answer with a colour (the return rises from ~0.05 to ~1/3) but it
    # cannot know which: the return must stay near chance.
    assert 0.2 < statistics.mean(r[-10:]) < 0.45, r


def test_critic_free_grpo_learns_the_demo_too(tmp_path):
    cfg = load_config("demo", ["run.progress=false", "run.loggers=[]", "algorithm.name=grpo"])
    result = train(cfg, tmp_path / "grpo")
    assert statistics.mean(returns(result)[-5:]) >= 0.9, returns(result)
    assert result.rows[-1].get("value_loss") is None
