import pytest

from marft.config import AgentConfig, ConfigError, TeamConfig
from marft.envs import Observation
from marft.team import TeamGraph, build_messages


def team(*agents):
    return TeamConfig(agents=[AgentConfig(**a) for a in agents])


def test_default_observes_all_before_and_chain_order():
    g = TeamGraph.from_config(team({"role": "a"}, {"role": "b"}, {"role": "c"}))
    assert g.roles == ["a", "b", "c"]
    assert g.agent("c").observes == ("a", "b")
    assert [[x.role for x in lvl] for lvl in g.levels] == [["a"], ["b"], ["c"]]


def test_independent_agents_share_a_level():
    g = TeamGraph.from_config(
        team({"role": "a", "observes": []}, {"role": "b", "observes": []}, {"role": "c"})
    )
    assert [[x.role for x in lvl] for lvl in g.levels] == [["a", "b"], ["c"]]
    assert [a.index for a in g.agents] == [0, 1, 2]


def test_acting_order_is_topological_not_declaration():
    g = TeamGraph.from_config(
        team({"role": "actor", "observes": ["planner"]}, {"role": "planner", "observes": []})
    )
    assert g.roles == ["planner", "actor"]
    assert g.agent("actor").depth == 1 and g.agent("actor").index == 1


def test_cycle_is_an_error():
    with pytest.raises(ConfigError, match="cycle: a -> b -> a|cycle: b -> a -> b"):
        TeamGraph.from_config(team({"role": "a", "observes": ["b"]}, {"role": "b", "observes": ["a"]}))


def test_unknown_and_duplicate_roles():
    with pytest.raises(ConfigError, match=r"team.agents.1.observes.0: unknown role 'zz'"):
        TeamGraph.from_config(team({"role": "a"}, {"role": "b", "observes": ["zz"]}))
    with pytest.raises(ConfigError, match=r"team.agents.1.role: duplicate role 'a'"):
        TeamGraph.from_config(team({"role": "a"}, {"role": "a"}))
    with pytest.raises(ConfigError, match="cannot observe itself"):
        TeamGraph.from_config(team({"role": "a", "observes": ["a"]}))


def test_messages_hold_private_view_and_observed_outputs_only():
    g = TeamGraph.from_config(team({"role": "a", "system_prompt": "sys a"}, {"role": "b", "observes": ["a"]}))
    obs = Observation(text="task", private={"a": "secret 3"})
    ma = build_messages(g.agent("a"), obs, {}, g.message_format)
    mb = build_messages(g.agent("b"), obs, {"a": "hello"}, g.message_format)
    assert ma == [{"role": "system", "content": "sys a"}, {"role": "user", "content": "task\nsecret 3"}]
    assert mb == [{"role": "user", "content": "task\na: hello"}]
