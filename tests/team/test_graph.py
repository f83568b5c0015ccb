import pytest

from marft.config import AgentConfig, ConfigError, TeamConfig
from marft.envs import Observation
from marft.team import TeamGraph, build_messages


def team(*agents):
    return TeamConfig(agents=[AgentConfig(**a) for a in agents])


def test_default_observes_all_before_and_chain_order():
    g = TeamGraph.from_config(team({"role": "x"}, {"role": "y"}, {"role": "z"}))
    assert g.roles == ["x", "y", "z"]
    assert g.agent("z").observes == ("x", "y")
    assert [[x.role for x in lvl] for lvl in g.levels] == [["x"], ["y"], ["z"]]


def test_independent_agents_share_a_level():
    g = TeamGraph.from_config(
        team({"role": "x", "observes": []}, {"role": "y", "observes": []}, {"role": "z"})
    )
    assert [[x.role for x in lvl] for lvl in g.levels] == [["x", "y"], ["z"]]
    assert [a.index for a in g.agents] == [0, 1, 2]


def test_acting_order_is_topological_not_declaration():
    g = TeamGraph.from_config(
        team({"role": "actor", "observes": ["planner"]}, {"role": "planner", "observes": []})
    )
    assert g.roles == ["planner", "actor"]
    assert g.agent("actor").depth == 1 and g.agent("actor").index == 1


def test_cycle_is_an_error():
    with pytest.raises(ConfigError, match="cycle: x -> y -> x|cycle: y -> x -> y"):
        TeamGraph.from_config(team({"role": "x", "observes": ["y"]}, {"role": "y", "observes": ["x"]}))


def test_unknown_and_duplicate_roles():
    with pytest.raises(ConfigError, match=r"team.agents.1.observes.0: unknown role 'zz'"):
        TeamGraph.from_config(team({"role": "x"}, {"role": "y", "observes": ["zz"]}))
    with pytest.raises(ConfigError, match=r"team.agents.1.role: duplicate role 'x'"):
        TeamGraph.from_config(team({"role": "x"}, {"role": "x"}))
    with pytest.raises(ConfigError, match="cannot observe itself"):
        TeamGraph.from_config(team({"role": "x", "observes": ["x"]}))


def test_messages_hold_private_view_and_observed_outputs_only():
    g = TeamGraph.from_config(team({"role": "x", "system_prompt": "sys x"}, {"role": "y", "observes": ["x"]}))
    obs = Observation(text="task", private={"x": "secret 3"})
    ma = build_messages(g.agent("x"), obs, [], g.message_format)
    mb = build_messages(g.agent("y"), obs, [("x", "hello")], g.message_format)
    assert ma == [{"role": "system", "content": "sys x"}, {"role": "user", "content": "task\nsecret 3"}]
    assert mb == [{"role": "user", "content": "task\nx: hello"}]
