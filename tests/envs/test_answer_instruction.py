"""The math env's answer instruction: only graded agents are told to box an answer, and the graded
agent's prompt is byte for byte what it was when the instruction was part of the shared text."""

import pytest

from marft.compose import load_config, make_env
from marft.config import AgentConfig, ConfigError, TeamConfig
from marft.envs.base import Observation
from marft.team import TeamGraph
from marft.team.prompts import build_messages

OLD_INSTRUCTION = "{problem}\n\nPut your final answer within \\boxed{{}}."
"""The shared observation before the answer instruction became the graded agents' private text."""


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "What is 3 times 4?", "answer": "12"}\n')
    return path


def planner_solver() -> TeamGraph:
    """The ``smollm2_arith`` team's shape: a planner that must not compute, a graded solver."""
    agents = [
        AgentConfig(role="planner", system_prompt="Plan. Do not compute the result."),
        AgentConfig(role="solver", system_prompt="Solve it.", observes=["planner"], graded=True),
    ]
    return TeamGraph.from_config(TeamConfig(agents=agents))


def solo() -> TeamGraph:
    return TeamGraph.from_config(TeamConfig(agents=[AgentConfig(role="solver", graded=True)]))


def messages(graph: TeamGraph, obs: Observation, role: str, seen=()) -> list[dict[str, str]]:
    return build_messages(graph.agent(role), obs, list(seen), graph.message_format)


def test_graded_agent_sees_the_old_prompt_and_the_planner_no_answer_format(jsonl):
    graph = planner_solver()
    env = make_env("math", {"data": str(jsonl)}, graph)
    for index in range(len(env.problems)):
        obs = env.reset_to(index)
        old = Observation(text=OLD_INSTRUCTION.format(problem=env.problem))
        seen = [("planner", "multiply 3 by 4")]
        assert messages(graph, obs, "solver", seen) == messages(graph, old, "solver", seen)
        assert messages(graph, obs, "solver", seen)[-1]["content"] == (
            f"{env.problem}\n\nPut your final answer within \\boxed{{}}.\nplanner: multiply 3 by 4"
        )
        planner = messages(graph, obs, "planner")[-1]["content"]
        assert planner == env.problem and "boxed" not in planner


def test_a_single_agent_sees_exactly_the_old_prompt(jsonl):
    graph = solo()
    env = make_env("math", {"data": str(jsonl)}, graph)
    for seed in range(4):
        obs = env.reset(seed=seed)
        old = Observation(text=OLD_INSTRUCTION.format(problem=env.problem))
        assert messages(graph, obs, "solver") == messages(graph, old, "solver")


def test_feedback_keeps_the_answer_instruction_private(jsonl):
    graph = planner_solver()
    env = make_env("math", {"data": str(jsonl), "max_attempts": 3}, graph)
    env.reset_to(1)
    r = env.step({"planner": "multiply", "solver": "\\boxed{7}"})
    assert not r.done and "7 is wrong" in r.observation.text and "boxed" not in r.observation.text
    assert r.observation.private == {"solver": "\nPut your final answer within \\boxed{}."}
    planner = messages(graph, r.observation, "planner")[-1]["content"]
    assert "7 is wrong" in planner and "boxed" not in planner
    solver = messages(graph, r.observation, "solver")[-1]["content"]
    assert solver == (
        "What is 3 times 4?\n\nYour team's answer 7 is wrong. Check the work and try again.\n\n"
        "Put your final answer within \\boxed{}."
    )
    r = env.step({"planner": "multiply", "solver": "\\boxed{8}"})  # and on every later attempt
    assert "8 is wrong" in r.observation.text and set(r.observation.private) == {"solver"}


def test_every_graded_agent_gets_it(jsonl):
    agents = [AgentConfig(role=r, graded=r != "helper") for r in ("first", "helper", "last")]
    env = make_env("math", {"data": str(jsonl), "reward": "each"}, TeamGraph.from_config(TeamConfig(agents)))
    assert set(env.reset(seed=0).private) == {"first", "last"}


def test_empty_answer_instruction_and_the_old_instruction_give_the_old_prompt(jsonl):
    graph = planner_solver()
    kwargs = {"data": str(jsonl), "instruction": OLD_INSTRUCTION, "answer_instruction": ""}
    env = make_env("math", kwargs, graph)
    obs = env.reset_to(0)
    assert obs.private == {} and obs.text == OLD_INSTRUCTION.format(problem="1+1?")
    env = make_env("math", {"data": str(jsonl), "answer_instruction": ""}, graph)
    assert messages(graph, env.reset_to(0), "solver")[-1]["content"] == "1+1?"


def test_a_custom_answer_instruction_and_the_vocabulary(jsonl):
    graph = solo()
    env = make_env("math", {"data": str(jsonl), "answer_instruction": "End with: The answer is N."}, graph)
    obs = env.reset_to(0)
    assert messages(graph, obs, "solver")[-1]["content"] == "1+1?\n\nEnd with: The answer is N."
    assert "End with: The answer is N." in env.vocabulary()


@pytest.mark.parametrize("text", ["Answer {problem} in \\boxed{}.", "Put it in \\boxed{{}}."])
def test_answer_instruction_is_plain_text(jsonl, text):
    with pytest.raises(ConfigError) as e:
        make_env("math", {"data": str(jsonl), "answer_instruction": text}, solo())
    assert "answer_instruction" in str(e.value)


def test_the_smollm2_arith_planner_is_not_asked_for_an_answer(jsonl):
    cfg = load_config("smollm2_arith", [f"env.kwargs.data={jsonl}"])
    graph = TeamGraph.from_config(cfg.team)
    env = make_env(cfg.env.name, cfg.env.kwargs, graph)
    obs = env.reset(seed=0)
    assert "boxed" not in messages(graph, obs, "planner")[-1]["content"]
    assert "boxed" in messages(graph, obs, "solver", [("planner", "add them")])[-1]["content"]
