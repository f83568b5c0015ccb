"""The math env: data loading, seeded draws, multi-turn feedback, graded agents."""

import pytest

from marft.compose import load_config, make_env
from marft.config import AgentConfig, ConfigError, TeamConfig
from marft.envs.math.env import arithmetic_problems
from marft.team import TeamGraph
from tests.conftest import DATA


def team(*graded_flags):
    agents = [AgentConfig(role=f"agent{i}", graded=g) for i, g in enumerate(graded_flags)]
    return TeamGraph.from_config(TeamConfig(agents=agents))


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"problem": "1+1?", "answer": "2"}\n{"problem": "half of 1?", "answer": "\\\\frac{1}{2}"}\n'
    )
    return path


def test_loads_jsonl_and_draws_with_the_seed(jsonl):
    env = make_env("math", {"data": str(jsonl)}, team(False, True))
    assert len(env.problems) == 2
    draws = [env.reset(seed=s).text for s in range(6)]
    again = [env.reset(seed=s).text for s in range(6)]
    assert draws == again and len(set(draws)) == 2
    obs = env.reset(seed=0)  # the answer format is the graded agent's private text
    assert "boxed" not in obs.text and obs.private == {"agent1": "\nPut your final answer within \\boxed{}."}


def test_right_answer_ends_the_episode_wrong_answer_gets_feedback(jsonl):
    env = make_env("math", {"data": str(jsonl), "max_attempts": 3}, team(False, True))
    env.reset_to(1)
    r = env.step({"agent0": "plan", "agent1": "I think \\boxed{0.4}"})
    assert (r.rewards, r.done) == (0.0, False)
    assert "0.4 is wrong" in r.observation.text and "half of 1?" in r.observation.text
    r = env.step({"agent0": "plan", "agent1": "so \\boxed{0.5}"})
    assert (r.rewards, r.done) == (1.0, True)
    assert r.info["correct"] == {"agent1": True} and r.info["attempt"] == 2


def test_attempts_run_out(jsonl):
    env = make_env("math", {"data": str(jsonl), "max_attempts": 2}, team(False, True))
    env.reset_to(0)
    assert not env.step({"agent0": "", "agent1": "\\boxed{3}"}).done
    assert env.step({"agent0": "", "agent1": "\\boxed{3}"}).done


def test_each_graded_agent_rewarded_on_its_own(jsonl):
    env = make_env("math", {"data": str(jsonl), "reward": "each"}, team(True, False, True))
    env.reset_to(0)
    r = env.step({"agent0": "\\boxed{2}", "agent1": "chat", "agent2": "\\boxed{3}"})
    assert r.rewards == {"agent0": 1.0, "agent2": 0.0}
    assert r.done  # max_attempts 1


def test_the_fixture_datasets_load():
    for path in (DATA / "gsm8k_test.jsonl", DATA / "math_test.jsonl"):
        env = make_env("math", {"data": str(path), "limit": 25}, team(True))
        assert len(env.problems) == 25 and all(p and a for p, a in env.problems)
    gsm = make_env("math", {"data": str(DATA / "gsm8k_test.jsonl")}, team(True))
    assert gsm.problems[0][1] == "18" and "Janet" in gsm.problems[0][0]


def test_bad_data_and_team_are_config_errors(tmp_path, jsonl):
    with pytest.raises(ConfigError, match="dataset file .* not found"):
        load_config("math_dual", [f"env.kwargs.data={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(ConfigError, match="no agent is graded"):
        load_config("math_dual", [f"env.kwargs.data={jsonl}", "team.agents.1.graded=false"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "answer": "1"}\n')
    with pytest.raises(ConfigError, match="line 1 has no field 'problem'"):
        make_env("math", {"data": str(bad)})


def test_generated_arithmetic_is_seeded_and_correct():
    a = arithmetic_problems(50, 0, 20)
    assert a == arithmetic_problems(50, 0, 20) and a != arithmetic_problems(50, 1, 20)
    for text, answer in a:
        assert int(answer) >= 0 and "How many" in text


@pytest.mark.parametrize("preset", ["math_single", "math_dual", "math_trio", "math_quartet"])
def test_team_presets_validate(preset, jsonl):
    cfg = load_config(preset, [f"env.kwargs.data={jsonl}"])
    graph = TeamGraph.from_config(cfg.team)
    assert sum(a.graded for a in graph.agents) == 1 and graph.agents[-1].graded
    assert len(graph.agents) == {"math_single": 1, "math_dual": 2, "math_trio": 3, "math_quartet": 4}[preset]


def test_arithmetic_data_source_builds_an_env():
    env = make_env("math", {"data": "arithmetic", "arith_count": 30, "arith_seed": 3}, team(True))
    assert len(env.problems) == 30 and env.problems == arithmetic_problems(30, 3, 20)


def test_hugging_face_loading_path_through_a_local_file(jsonl):
    """The hf: code path (datasets.load_dataset) on a local file, as the hub is unreachable here."""
    env = make_env("math", {"data": "hf:json", "data_files": [str(jsonl)], "split": "train"}, team(True))
    assert env.problems == (("1+1?", "2"), ("half of 1?", "\\frac{1}{2}"))
    gsm = DATA / "gsm8k_test.jsonl"  # raw GSM8K-style rows: the number after '####' in the solution
    env = make_env(
        "math",
        {
            "data": "hf:json",
            "data_files": [str(gsm)],
            "answer_key": "solution",
            "answer_after": "####",
            "limit": 5,
        },
        team(True),
    )
    ref = make_env("math", {"data": str(gsm), "limit": 5}, team(True))
    assert [a for _, a in env.problems] == [a for _, a in ref.problems]


def test_a_routing_team_is_graded_on_the_graded_agents_that_acted(jsonl):
    env = make_env("math", {"data": str(jsonl)}, team(True, False, True))
    env.reset_to(0)
    r = env.step({"agent0": "\\boxed{2}"})  # agent2 (graded, last) was not routed to
    assert (r.rewards, r.correct, r.answer) == (1.0, True, "2") and r.info["correct"] == {"agent0": True}
    env.reset_to(0)
    r = env.step({"agent1": "\\boxed{2}"})  # no graded agent acted: nothing to grade
    assert (r.rewards, r.correct, r.answer) == (0.0, False, None)
