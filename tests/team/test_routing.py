"""Dynamic routing: router choices, env routing, what agents see, and the trajectory layout."""

import random
from dataclasses import dataclass, field

import pytest
import torch

from marft.compose import capabilities_of, load_config, validate
from marft.config import AgentConfig, ConfigError, RoutingConfig, TeamConfig
from marft.envs.base import Observation, StepResult
from marft.envs.copies import EnvCopies
from marft.rollout import Collector, Generation
from marft.team import RoutedSchedule, TeamGraph
from marft.trainer import Trainer


def graph(*agents, **routing):
    return TeamGraph.from_config(
        TeamConfig(agents=[AgentConfig(**a) for a in agents], routing=RoutingConfig(**routing))
    )


LEAD = {"role": "lead", "routes": ["solver", "done"], "default_route": "done"}


def run_step(schedule, outputs, obs=None, seed=0):
    """Drive one step: ``outputs`` maps role -> list of texts it writes, in turn."""
    step = schedule.begin(0, obs or Observation("task"), random.Random(seed))
    said = {r: list(t) for r, t in outputs.items()}
    seen = []
    while agents := step.ready():
        for a in agents:
            seen.append((a.role, step.seen(a)))
        for a in agents:
            step.record(a, said[a.role].pop(0))
    return step, seen


def test_a_router_choice_is_read_from_its_output_and_invalid_ones_fall_back():
    g = graph(LEAD, {"role": "solver", "next": ["lead"]}, start=["lead"])
    s = RoutedSchedule(g)
    step, seen = run_step(s, {"lead": ["Let the SOLVER do it", "done, it is 4"], "solver": ["4"]})
    assert [a.role for a in step.actions] == ["lead", "solver", "lead"]  # the lead acts twice
    # the lead's second turn sees its own first output and the solver's (its route), in order
    assert seen[2] == ("lead", [("lead", "Let the SOLVER do it"), ("solver", "4")])
    assert step.invalid == 0 and step.router_actions == 2
    step, _ = run_step(s, {"lead": ["no idea"]})
    assert [a.role for a in step.actions] == ["lead"] and step.invalid == 1  # default: done


def test_random_default_and_uniform_routers_draw_from_the_copy_stream():
    g = graph({**LEAD, "default_route": "random"}, {"role": "solver"}, start=["lead"])
    picks = {
        run_step(RoutedSchedule(g), {"lead": ["?"], "solver": ["x"]}, seed=i)[0].actions[-1].role
        for i in range(20)
    }
    assert picks == {"lead", "solver"}  # sometimes done (the lead alone), sometimes the solver
    g = graph({**LEAD, "route_by": "uniform"}, {"role": "solver"}, start=["lead"])
    step, _ = run_step(RoutedSchedule(g), {"lead": ["done"] * 2, "solver": ["x"]}, seed=3)
    again, _ = run_step(RoutedSchedule(g), {"lead": ["done"] * 2, "solver": ["x"]}, seed=3)
    assert [a.role for a in step.actions] == [a.role for a in again.actions]  # seeded


def test_fan_out_agents_act_together_and_do_not_see_each_other():
    g = graph(
        {"role": "lead", "next": ["x", "y"]},
        {"role": "x", "next": ["judge"]},
        {"role": "y", "next": ["judge"]},
        {"role": "judge", "observes": []},
        start=["lead"],
    )
    step, seen = run_step(RoutedSchedule(g), {"lead": ["go"], "x": ["1"], "y": ["2"], "judge": ["ok"]})
    assert [(a.role, a.turn) for a in step.actions] == [("lead", 0), ("x", 1), ("y", 1), ("judge", 2)]
    assert dict(seen)["x"] == [("lead", "go")] and dict(seen)["y"] == [("lead", "go")]
    assert dict(seen)["judge"] == [("lead", "go"), ("x", "1"), ("y", "2")]  # routed after both: once


def test_max_actions_cuts_a_loop():
    g = graph({"role": "x", "next": ["y"]}, {"role": "y", "next": ["x"]}, start=["x"], max_actions=3)
    step, _ = run_step(RoutedSchedule(g), {"x": ["1", "3"], "y": ["2"]})
    assert [a.role for a in step.actions] == ["x", "y", "x"] and step.cut


def test_routing_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"team.agents.0.routes: only a routing team"):
        TeamGraph.from_config(TeamConfig(agents=[AgentConfig(role="x", routes=["y"]), AgentConfig(role="y")]))
    with pytest.raises(ConfigError, match=r"team.agents.0.routes.0: unknown role 'zz'"):
        graph({"role": "x", "routes": ["zz"]}, start=["x"])
    with pytest.raises(ConfigError, match=r"team.routing.start.0: unknown role 'zz'"):
        graph({"role": "x"}, start=["zz"])
    with pytest.raises(ConfigError, match="give routes or next"):
        AgentConfig(role="x", routes=["y"], next=["y"])
    with pytest.raises(ConfigError, match="choice_pattern"):
        RoutingConfig(start=["x"], choice_pattern="no routes here")
    with pytest.raises(ConfigError, match="env.reward_assignment"):
        load_config("routing", ["env.reward_assignment=shared"])  # GAE would favour longer routes
    validate(load_config("routing", ["env.reward_assignment=shared", "algorithm.name=grpo"]))
    # a routing team may have cycles (a verifier that sends work back)
    graph({"role": "x", "next": ["y"]}, {"role": "y", "next": ["x"]}, start=["x"])


@dataclass
class ScriptedBackend:
    """Routers answer by the task kind in their prompt; experts say red or blue, by the row's
    random key (env copies of one task differ). Records every call."""

    tokenizer: object
    device: torch.device = torch.device("cpu")
    shares_weights: bool = False
    version: int = 0
    calls: list = field(default_factory=list)

    def generate(self, prompts, adapters, limits=None, keys=None):
        self.calls.append(list(adapters))
        out = []
        keys = keys if keys is not None else torch.zeros(len(adapters), dtype=torch.long)
        for ids, adapter, key in zip(prompts.ids, adapters, keys.tolist(), strict=True):
            text = self.tokenizer.decode(ids)
            if adapter != "router":
                word = "red" if key % 2 else "blue"
            elif "north :" in text:
                word = "done"  # north already answered: finish
            else:
                word = {"sun": "north", "rain": "south"}.get(text.split("task")[-1].split()[0], "nonsense")
            out.append([self.tokenizer.convert_tokens_to_ids(word)])
        S = len(out)
        return Generation(
            torch.tensor(out), torch.ones(S, 1, dtype=torch.long), torch.full((S, 1), -0.5), torch.zeros(S, 1)
        )

    def update_weights(self, version, weights, changed=None):
        self.version = version

    def release(self):
        pass


def routed_trainer(tmp_path, *extra):
    overrides = [
        *extra,
        "run.progress=false",
        "run.loggers=[]",
        "run.report=false",
        "env.n_envs=12",
        "team.routing.max_actions=3",
        "team.agents.0.routes=[north,south,done]",
        "team.agents.0.default_route=done",
        "team.agents.1.next=[router]",  # north hands back to the router, which then acts again
        "model.tiny.extra_words=[done,nonsense]",
        "algorithm.ppo_epochs=1",
    ]
    trainer = Trainer(load_config("routing", overrides), tmp_path / "run")
    trainer.setup()
    return trainer


def test_the_collector_follows_each_copys_route_and_batches_across_routes(tmp_path):
    trainer = routed_trainer(tmp_path)
    tok, cfg = trainer.parts.model.tokenizer, trainer.cfg
    backend = ScriptedBackend(tok)
    collector = Collector(
        trainer.parts.sampler.envs,
        trainer.parts.graph,
        tok,
        backend,
        cfg.env,
        cfg.sampling,
        seed=5,
        transcripts_per_iter=12,
    )
    traj = collector.collect(1)
    kinds = {t["env"]: t["turns"][0]["info"]["kind"] for t in traj.transcripts}
    routes = {t["env"]: t["turns"][0]["route"] for t in traj.transcripts}
    want = {"sun": "router>north>router", "rain": "router>south", "snow": "router"}
    assert {routes[b] for b in routes} == {want[k] for k in kinds.values()} and len(set(kinds.values())) == 3
    assert all(routes[b] == want[kinds[b]] for b in routes)
    # one call per turn across env copies that chose differently: north and south rows together
    assert backend.calls[0] == ["router"] * 12 and sorted(set(backend.calls[1])) == ["north", "south"]
    assert traj.shape == (12, 2, 4)  # the router acting again opened a second round
    R, E = 0, 3  # router, east
    for b, kind in kinds.items():
        turns = traj.turns[b].tolist()
        if kind == "sun":
            assert turns == [[0, 1, -1, -1], [2, -1, -1, -1]]
            assert traj.action_mask[b, 1, R] == 1 and traj.step_ends[b].tolist() == [0.0, 1.0]
            # reward_assignment last: the router's second action holds the team reward
            assert traj.rewards[b, 1, R] == traj.team_rewards[b, 1] and traj.rewards[b, 0].abs().sum() == 0
        elif kind == "rain":
            assert turns == [[0, -1, 1, -1], [-1, -1, -1, -1]] and traj.step_ends[b].tolist() == [1.0, 0.0]
        else:
            assert turns == [[0, -1, -1, -1], [-1, -1, -1, -1]]
        assert traj.action_mask[b, :, E].sum() == 0  # east is never asked
    sun = next(b for b, k in kinds.items() if k == "sun")
    second = next(t for t in traj.transcripts if t["env"] == sun)["turns"][0]["agents"][2]
    assert second["role"] == "router" and second["messages"][-1]["content"] in (
        "task sun\nrouter: north\nnorth: red",
        "task sun\nrouter: north\nnorth: blue",
    )
    summary = traj.route_summary()
    assert sum(v for k, v in summary.items() if k.startswith("route_share/")) == pytest.approx(1.0)
    assert summary["route_invalid"] == pytest.approx(
        sum(k == "snow" for k in kinds.values()) / (12 + sum(k == "sun" for k in kinds.values()))
    )
    assert traj.env_steps == 12
    # the update runs on ragged routes and trains the router and the experts that acted, not east
    scores = trainer.parts.scorer.score(traj)
    before = {
        r: [p.detach().clone() for p in trainer.parts.model.adapter_parameters(r)]
        for r in ("router", "north", "east")
    }
    trainer.parts.learner.update(traj, scores, 0)
    moved = {
        r: any(
            not torch.equal(a, b) for a, b in zip(ps, trainer.parts.model.adapter_parameters(r), strict=True)
        )
        for r, ps in before.items()
    }
    assert moved == {"router": True, "north": True, "east": False}


class TurnEnv:
    """Env routing: the env names who acts: north at even steps, south at odd ones."""

    def __init__(self, **kwargs):
        self.t = 0

    def reset(self, seed=None):
        self.t = 0
        return Observation("task sun", next_agents=["north"])

    def step(self, actions):
        self.t += 1
        return StepResult(
            Observation("task sun", next_agents=["north" if self.t % 2 == 0 else "south"]), 0.0, False
        )


def test_the_env_names_the_agents_of_the_next_step(tmp_path):
    trainer = routed_trainer(tmp_path, "env.horizon=3")
    tok, cfg = trainer.parts.model.tokenizer, trainer.cfg
    envs = EnvCopies([TurnEnv() for _ in range(2)], capabilities_of(TurnEnv))
    collector = Collector(envs, trainer.parts.graph, tok, ScriptedBackend(tok), cfg.env, cfg.sampling, seed=1)
    traj = collector.collect(3)
    # north, south, north; north hands to the router, which sees north's answer and finishes
    roles = [
        [trainer.parts.graph.agents[n].role for n in range(4) if traj.turns[0, t, n] >= 0]
        for t in range(traj.shape[1])
    ]
    assert roles == [["router", "north"], ["south"], ["router", "north"]]
    assert traj.env_steps == 6


@pytest.mark.parametrize("algorithm", ["tppo", "grpo"])
def test_token_level_and_group_updates_run_on_ragged_routes(tmp_path, algorithm):
    trainer = routed_trainer(tmp_path, f"algorithm.name={algorithm}", "algorithm.group_size=4")
    tok, cfg = trainer.parts.model.tokenizer, trainer.cfg
    collector = Collector(
        trainer.parts.sampler.envs,
        trainer.parts.graph,
        tok,
        ScriptedBackend(tok),
        cfg.env,
        cfg.sampling,
        seed=5,
        episodic=algorithm == "grpo",
        group_size=4,
    )
    traj = collector.collect(1)
    assert traj.shape[1] == 2  # some copies routed the router twice
    before = [p.detach().clone() for p in trainer.parts.model.adapter_parameters("router")]
    result = trainer.parts.learner.update(traj, trainer.parts.scorer.score(traj), 0)
    assert all(v == v and abs(v) < 1e6 for v in result.metrics.values() if isinstance(v, float))
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before, trainer.parts.model.adapter_parameters("router"), strict=True)
    )


def test_route_words_map_to_choices():
    g = graph(
        {"role": "lead", "routes": {"answer": "done", "help": "solver"}, "default_route": "solver"},
        {"role": "solver", "next": ["lead"]},
        start=["lead"],
        max_actions=3,
    )
    assert g.agent("lead").routes == ("done", "solver")
    step, _ = run_step(RoutedSchedule(g), {"lead": ["The ANSWER is 4"]})
    assert [a.role for a in step.actions] == ["lead"] and step.invalid == 0
    step, _ = run_step(RoutedSchedule(g), {"lead": ["hmm", "so the answer is 4"], "solver": ["4"]})
    assert [a.role for a in step.actions] == ["lead", "solver", "lead"] and step.invalid == 1
    with pytest.raises(ConfigError, match=r"team.agents.0.routes.answer: unknown role 'nobody'"):
        graph({"role": "lead", "routes": {"answer": "nobody"}}, start=["lead"])


def test_env_copy_slices_merge_into_what_one_collector_collects(tmp_path):
    # What Ray rollout workers rely on: each copy's layout (rounds) and call ids depend only on its
    # own history, so slices collected apart merge into one collector's trajectory, tensor for tensor.
    from collections import Counter

    from marft.compose import build_envs, resolve
    from marft.rollout.merge import merge_trajectories

    trainer = routed_trainer(tmp_path)
    tok, cfg = trainer.parts.model.tokenizer, trainer.cfg

    def collector(n, offset):
        envs = build_envs(resolve(cfg), n)
        return Collector(
            envs,
            trainer.parts.graph,
            tok,
            ScriptedBackend(tok),
            cfg.env,
            cfg.sampling,
            seed=5,
            env_offset=offset,
        )

    whole = collector(12, 0).collect(2)
    merged = merge_trajectories(
        [collector(6, 0).collect(2), collector(6, 6).collect(2)], [0, 6], tok.pad_token_id
    )
    assert whole.shape[1] > 2  # some copies took two rounds in a team step
    for name in ("turns", "rewards", "team_rewards", "dones", "step_ends", "action_mask"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    for a, b in zip(merged.agents, whole.agents, strict=True):
        assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.prompt_ids, b.prompt_ids)
    assert Counter(merged.routes) == Counter(whole.routes) and merged.route_metrics == whole.route_metrics


def test_a_step_needs_someone_to_act():
    with pytest.raises(ConfigError, match="team.routing.start|start: name the agents"):
        RoutingConfig(start=[])
    g = graph(LEAD, {"role": "solver"}, start=["lead"])
    with pytest.raises(ValueError, match="named no agent"):
        RoutedSchedule(g).begin(0, Observation("task", next_agents=[]), random.Random(0))
    with pytest.raises(ValueError, match="unknown agents"):
        RoutedSchedule(g).begin(0, Observation("task", next_agents=["ghost"]), random.Random(0))


def test_a_routing_run_resumes_exactly(tmp_path):
    # Routers draw random routes (default_route: random) from the env copies' streams: a resumed
    # run must draw the same ones.
    from marft.reporting.metrics import read_metrics, reproducible
    from marft.trainer import train

    quiet = [
        "run.progress=false",
        "run.loggers=[]",
        "run.report=false",
        "env.n_envs=8",
        "algorithm.ppo_epochs=1",
        "run.checkpoint_every=2",
    ]
    train(load_config("routing", [*quiet, "run.iterations=3"]), tmp_path / "whole")
    train(load_config("routing", [*quiet, "run.iterations=2"]), tmp_path / "split")
    train(load_config("routing", [*quiet, "run.iterations=3"]), tmp_path / "split", resume=True)
    a, b = (read_metrics(tmp_path / d) for d in ("whole", "split"))
    assert [reproducible(r) for r in a] == [reproducible(r) for r in b]
    assert any(k.startswith("route_share/") for k in a[-1])
