"""Every optional capability is a named protocol, checked once by ``marft.compose``: a backend
written to the documented protocol builds and samples, a class that keeps a protocol partly is an
error naming what is missing, unknown names list the choices, and a run resolves its config (the
checks and the team graph) once."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch

from marft.compose import (
    build_envs,
    build_training,
    capabilities_of,
    load_config,
    make_env,
    protocol_members,
    resolve,
)
from marft.config import ConfigError
from marft.envs.base import Observation, StepResult
from marft.rollout import ROLLOUT_BACKENDS, Generation, Sampler, WeightSync
from marft.rollout.collector import Collector
from marft.rollout.sampler import RemoteSampler
from tests.conftest import small_config

# ------------------------------------------------------------------------------------------ backends


class EchoBackend:
    """A backend written to the documented protocol only (docs/backends.md): every row answers
    with the first token of its agent's role, at log-prob -0.5."""

    needs_model_folder = False
    shares_weights = False

    def __init__(self, model, max_new_tokens: int) -> None:
        self.tokenizer = model.tokenizer
        self.device = model.device
        self.max_new_tokens = max_new_tokens
        self.versions: list[tuple[int, list[str] | None]] = []
        self.released = 0

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.sampling.top_k == 7:
            raise ConfigError("sampling.top_k", "the echo backend does not draw; use any other top_k")

    @classmethod
    def from_config(cls, model, cfg, model_folder=None) -> EchoBackend:
        return cls(model, cfg.sampling.max_new_tokens)

    def generate(self, prompts, adapters, limits=None, keys=None) -> Generation:
        S = len(prompts)
        first = [self.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in adapters]
        return Generation(
            torch.tensor(first)[:, None],
            torch.ones(S, 1, dtype=torch.long),
            torch.full((S, 1), -0.5),
            torch.zeros(S, 1),
        )

    def update_weights(self, version, weights, changed=None) -> None:
        self.versions.append((version, None if changed is None else list(changed)))

    def release(self) -> None:
        self.released += 1


class NoFactory:
    """A backend class without ``from_config``."""

    needs_model_folder = False
    shares_weights = True

    @classmethod
    def check_config(cls, cfg) -> None:
        pass

    def generate(self, prompts, adapters, limits=None, keys=None): ...

    def update_weights(self, version, weights, changed=None): ...

    def release(self): ...


ROLLOUT_BACKENDS.register("test-echo")(EchoBackend)
ROLLOUT_BACKENDS.register("test-no-factory")(NoFactory)


def test_a_backend_written_to_the_protocol_builds_through_compose_and_samples():
    resolved = resolve(small_config("sampling.backend=test-echo"))
    assert resolved.backend is EchoBackend
    parts = build_training(resolved)
    assert isinstance(parts.backend, EchoBackend) and isinstance(parts.sampler, Collector)
    traj = parts.sampler.collect(1)
    tok = parts.model.tokenizer
    speaker = tok("speaker", add_special_tokens=False)["input_ids"][0]
    assert traj.agents[0].response_ids[:, 0].tolist() == [speaker] * resolved.cfg.env.n_envs
    assert traj.agents[1].logprobs[:, 0].tolist() == [-0.5] * resolved.cfg.env.n_envs
    assert parts.backend.released == 1
    parts.backend.update_weights(1, parts.model.adapter_weights, ["speaker"])
    assert parts.backend.versions == [(1, ["speaker"])]


def test_a_backend_refuses_what_it_cannot_serve_at_load_time():
    with pytest.raises(ConfigError, match="sampling.top_k: the echo backend does not draw"):
        load_config("demo", ["sampling.backend=test-echo", "sampling.top_k=7"])


def test_a_backend_class_without_from_config_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"sampling.backend: .*NoFactory\) has no from_config"):
        load_config("demo", ["sampling.backend=test-no-factory"])


def test_an_unknown_backend_lists_the_choices():
    with pytest.raises(ConfigError, match=r"unknown backend 'nope'; choose one of: .*hf.*test-echo.*vllm"):
        load_config("demo", ["sampling.backend=nope"])
    with pytest.raises(KeyError, match="choose one of: .*hf.*vllm"):
        ROLLOUT_BACKENDS.get("nope")


def test_vllm_is_registered_by_path_and_not_imported_unless_chosen():
    code = (
        "import sys\n"
        "from marft.compose import load_config, resolve\n"
        "from marft.rollout import ROLLOUT_BACKENDS\n"
        "resolve(load_config('demo'))\n"
        "assert 'vllm' in ROLLOUT_BACKENDS and 'vllm' in ROLLOUT_BACKENDS.names()\n"
        "assert 'marft.rollout.vllm_backend' not in sys.modules, 'imported without being chosen'\n"
        "cls = ROLLOUT_BACKENDS.get('vllm')\n"
        "assert cls.__name__ == 'VLLMBackend' and 'vllm' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_both_samplers_keep_the_sampler_protocol():
    from marft.distributed.rollout import RayRollout

    methods, attributes = protocol_members(Sampler)
    assert set(methods) == {"last_metrics", "collect", "state_dict", "load_state_dict", "close"}
    for cls in (Collector, RayRollout):
        assert all(callable(getattr(cls, m, None)) or isinstance(getattr(cls, m), property) for m in methods)
    # the Ray sampler is also what receives the weights
    sync_methods, sync_attributes = protocol_members(WeightSync)
    assert sync_methods == ["update_weights"] and sync_attributes == ["shares_weights"]
    assert RayRollout.shares_weights is False and callable(RayRollout.update_weights)
    assert set(protocol_members(RemoteSampler)[0]) == set(methods) | {"update_weights"}


# ---------------------------------------------------------------------------------------------- envs


class HalfStateful:
    """Saves its state but cannot load it back."""

    def reset(self, seed=None):
        return Observation("x")

    def step(self, actions):
        return StepResult(Observation("x"), 0.0, True)

    def state_dict(self):
        return {}


class NoProblems(HalfStateful):
    """Claims to be evaluable (``reset_to``) but has no problem list."""

    def reset_to(self, index):
        return Observation("x")

    def load_state_dict(self, state):
        pass


@dataclass
class Counted:
    """An env of plain attributes (no ``state_dict``), metered, with its own notion of one answer."""

    steps: int = 0
    seen: list[str] = field(default_factory=list)

    def reset(self, seed=None):
        return Observation("name the secret colour red")

    def step(self, actions):
        self.steps += 1
        return StepResult(Observation("x"), 0.0, True)

    def pop_metrics(self):
        return {"steps": float(self.steps)}

    def same_answer(self, a, b):
        return a.strip() == b.strip()


def test_an_env_with_state_dict_but_no_load_state_dict_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"env.name: .*HalfStateful has state_dict but no load_state_dict"):
        load_config("demo", ["env.name=tests.test_protocols:HalfStateful", "env.kwargs={}"])
    with pytest.raises(ConfigError, match="StatefulEnv"):
        capabilities_of(HalfStateful)


class NoStep:
    """Not an env at all: it cannot step."""

    def reset(self, seed=None):
        return Observation("x")


def test_a_class_without_step_is_not_an_env():
    with pytest.raises(ConfigError, match=r"env.name: .*NoStep has no step: the Env protocol"):
        load_config("demo", ["env.name=tests.test_protocols:NoStep", "env.kwargs={}"])


def test_an_evaluable_env_without_problems_is_an_error_naming_it():
    resolved = resolve(load_config("demo", ["env.name=tests.test_protocols:NoProblems", "env.kwargs={}"]))
    assert resolved.env.evaluable and resolved.env.stateful
    with pytest.raises(ConfigError, match=r"env.name: env .*NoProblems.* has no problems"):
        build_envs(resolved, 2)


def test_env_copies_use_what_compose_decided():
    resolved = resolve(load_config("demo", ["env.name=tests.test_protocols:Counted", "env.kwargs={}"]))
    caps = resolved.env
    assert caps.metered and caps.answer_matching and not caps.stateful and not caps.evaluable
    envs = build_envs(resolved, 3)
    results = envs.step([0, 2], [{}, {}])
    assert [r.done for r in results] == [True, True] and [e.steps for e in envs] == [1, 0, 1]
    states = envs.states()  # no state_dict: a copy of the attributes
    assert states[0] == {"steps": 1, "seen": []}
    envs[0].steps = 9
    envs.load_states(states)
    assert envs[0].steps == 1
    assert envs.pop_metrics() == {"steps": 2.0}
    assert envs.same_answer(" 5", "5")
    with pytest.raises(ConfigError, match="has no problem set"):
        envs.reset_to(0, 1)


def test_make_env_binds_the_team_to_team_aware_envs():
    graph = resolve(load_config("math_single")).graph
    math = make_env("math", {"data": "arithmetic", "arith_count": 2}, graph)
    assert math.graded_roles == [a.role for a in graph.agents if a.graded] != []
    assert make_env("math", {"data": "arithmetic", "arith_count": 2}).graded_roles == []  # no team given
    with pytest.raises(ConfigError, match="env.name: unknown env 'nope'; choose one of: .*signal"):
        make_env("nope")


# ------------------------------------------------------------------------------------ resolved once


def test_a_run_checks_its_config_and_builds_its_team_graph_once(monkeypatch):
    import marft.compose.resolution as resolve_module
    from marft.team.graph import TeamGraph

    calls = {"check": 0, "graph": 0}
    check = resolve_module.check_config
    from_config = TeamGraph.from_config.__func__

    def counted_check(*args):
        calls["check"] += 1
        return check(*args)

    def counted_graph(cls, team):
        calls["graph"] += 1
        return from_config(cls, team)

    monkeypatch.setattr(resolve_module, "check_config", counted_check)
    monkeypatch.setattr(TeamGraph, "from_config", classmethod(counted_graph))
    cfg = load_config("demo", ["env.n_envs=4"])
    resolved = resolve(cfg)  # what the trainer does with the loaded config
    parts = build_training(resolved, build_envs(resolved, 4))
    assert parts.graph is resolved.graph and parts.algorithm is resolved.algorithm
    assert calls == {"check": 1, "graph": 1}
    cfg.env.n_envs = 8  # a changed config is checked again
    assert resolve(cfg) is not resolved and calls == {"check": 2, "graph": 2}


def test_a_copy_of_a_config_resolves_again():
    cfg = load_config("demo")
    resolved = resolve(cfg)
    assert resolve(cfg) is resolved
    assert resolve(copy.deepcopy(cfg)) is not resolved
    again = pickle.loads(pickle.dumps(cfg))  # what a Ray actor receives
    assert again == cfg and resolve(again).cfg is again
    assert resolved.device == torch.device("cpu") and resolved.dtype == torch.float32
