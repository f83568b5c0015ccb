"""The seams between rollout and training: a trajectory that travels, a collector that needs only a
backend protocol, a schedule that decides who acts, targets without side effects, and evaluation
of any env that says what is correct."""

import io
import pickle
from dataclasses import dataclass

import pytest
import torch

from marft.compose import load_config
from marft.envs.base import Observation, StepResult
from marft.rollout import Collector, Generation, GenerationBackend, Trajectory
from marft.team import Action, StaticSchedule, TeamGraph
from marft.trainer import Trainer
from tests.conftest import collect_scored, small_config


def make(tmp_path, *overrides):
    trainer = Trainer(small_config(*overrides), tmp_path / "run")
    trainer.setup()
    return trainer


def test_a_trajectory_is_plain_data_that_survives_pickling(tmp_path):
    trainer = make(tmp_path, "env.kwargs.rounds=2", "env.horizon=1", "run.steps_per_iter=2")
    traj = trainer.parts.sampler.collect(2)
    buf = io.BytesIO()
    torch.save(traj, buf)
    assert buf.tell() < 200_000  # tensors of token ids, not a model
    again = pickle.loads(pickle.dumps(traj))
    assert isinstance(again, Trajectory)
    for a, b in zip(traj.agents, again.agents, strict=True):
        assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(traj.turns, again.turns) and again.cut_prompts is not None
    # scoring the copy gives what scoring the original gives
    torch.testing.assert_close(
        trainer.parts.scorer.score(again).features[1], trainer.parts.scorer.score(traj).features[1]
    )


@dataclass
class EchoBackend:
    """A backend with no model at all: every row answers with its adapter's fixed token."""

    tokens: dict[str, int]
    device: torch.device = torch.device("cpu")
    shares_weights: bool = False
    version: int = 0
    released: int = 0

    def generate(self, prompts, adapters, limits=None, keys=None):
        S = len(prompts)
        ids = torch.tensor([[self.tokens[a]] for a in adapters])
        return Generation(
            ids, torch.ones(S, 1, dtype=torch.long), torch.full((S, 1), -0.5), torch.zeros(S, 1)
        )

    def update_weights(self, version, weights, changed=None):
        self.version = version

    def release(self):
        self.released += 1


def test_the_collector_needs_only_the_backend_protocol(tmp_path):
    trainer = make(tmp_path)
    tok = trainer.parts.model.tokenizer
    red, blue = tok.convert_tokens_to_ids("red"), tok.convert_tokens_to_ids("blue")
    backend = EchoBackend({"speaker": red, "listener": blue})
    assert isinstance(backend, GenerationBackend)
    cfg = trainer.cfg
    collector = Collector(
        trainer.parts.sampler.envs, trainer.parts.graph, tok, backend, cfg.env, cfg.sampling, seed=1
    )
    traj = collector.collect(1)
    assert traj.agents[0].response_ids[:, 0].tolist() == [red] * 8
    assert traj.agents[1].logprobs[:, 0].tolist() == [-0.5] * 8
    # the listener always says blue: it is right exactly when the secret is blue
    secrets = [t["turns"][0]["info"].get("secret") for t in traj.transcripts]
    assert all(s in ("red", "green", "blue") for s in secrets)
    assert traj.turns[:, 0].tolist() == [[0, 1]] * 8  # the speaker's turn, then the listener's
    assert backend.released == 1  # told once that the rollout is over


class OddEnvsSkipTheSpeaker:
    """A schedule that routes: in odd env copies only the listener acts."""

    def __init__(self, graph: TeamGraph) -> None:
        self.static = StaticSchedule(graph)
        self.graph = graph

    def begin(self, env, observation, rng):
        if env % 2 == 0:
            return self.static.begin(env, observation, rng)
        return ListenerAlone(self.graph.agent("listener"))


class ListenerAlone:
    """One team step in which the listener acts alone (the :class:`~marft.team.schedule.Step` protocol)."""

    def __init__(self, listener) -> None:
        self.listener, self.actions = listener, []

    def ready(self):
        return [] if self.actions else [self.listener]

    def seen(self, agent):
        return []

    def record(self, agent, text):
        self.actions.append(Action(agent.role, text))


def test_a_schedule_decides_who_acts_and_the_update_follows(tmp_path):
    trainer = make(tmp_path)
    cfg, graph = trainer.cfg, trainer.parts.graph
    collector = Collector(
        trainer.parts.sampler.envs,
        graph,
        trainer.parts.model.tokenizer,
        trainer.parts.backend,
        cfg.env,
        cfg.sampling,
        seed=3,
        schedule=OddEnvsSkipTheSpeaker(graph),
    )
    traj = collector.collect(1)
    odd = torch.arange(8) % 2 == 1
    assert traj.action_mask[odd, 0, 0].sum() == 0 and traj.action_mask[~odd, 0, 0].sum() == 4
    assert traj.action_mask[:, 0, 1].sum() == 8
    # even copies: speaker in turn 0, listener in turn 1; odd copies: the listener alone in turn 0
    assert traj.turns[~odd, 0].tolist() == [[0, 1]] * 4 and traj.turns[odd, 0].tolist() == [[-1, 0]] * 4
    assert (traj.agents[0].response_mask[odd] == 0).all()  # no action, no tokens
    scores = trainer.parts.scorer.score(traj)
    before = [p.detach().clone() for p in trainer.parts.model.adapter_parameters("speaker")]
    result = trainer.parts.learner.update(traj, scores, 0)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values() if v == v)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before, trainer.parts.model.adapter_parameters("speaker"), strict=True)
    )


def test_targets_have_no_side_effects_and_the_critic_fits_in_its_own_step(tmp_path):
    trainer = make(tmp_path)
    traj, scores = collect_scored(trainer, 1)
    head = [p.detach().clone() for p in trainer.parts.model.value_head.parameters()]
    adapters = [p.detach().clone() for p in trainer.parts.model.adapter_parameters("listener")]
    rng = torch.get_rng_state()
    targets = trainer.parts.learner.targets(traj, scores)
    assert all(
        torch.equal(a, b) for a, b in zip(head, trainer.parts.model.value_head.parameters(), strict=True)
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(adapters, trainer.parts.model.adapter_parameters("listener"), strict=True)
    )
    assert torch.equal(rng, torch.get_rng_state())
    again = trainer.parts.learner.targets(traj, scores)
    assert all(
        torch.equal(a.advantages, b.advantages) for a, b in zip(targets.agents, again.agents, strict=True)
    )
    stats = trainer.parts.learner.fit_critic(targets)
    assert stats.value_loss > 0 and stats.metrics()["value_loss"] == stats.value_loss
    assert any(
        not torch.equal(a, b) for a, b in zip(head, trainer.parts.model.value_head.parameters(), strict=True)
    )


def test_the_kl_penalty_is_one_explicit_term(tmp_path):
    trainer = make(
        tmp_path,
        "algorithm.name=grpo",
        "algorithm.group_size=4",
        "algorithm.kl_coef=0.5",
        "algorithm.kl_mode=penalty",
    )
    with torch.no_grad():
        for p in trainer.parts.model.adapter_parameters("speaker"):
            p.add_(0.3 * torch.randn_like(p))
    traj, scores = collect_scored(trainer, 1)
    from marft.algorithms import kl_estimate

    kl = [
        (kl_estimate(a.logprobs, r, "k3") * a.response_mask).sum(-1).reshape(8, 1)
        for a, r in zip(traj.agents, scores.ref_logprobs, strict=True)
    ]
    penalty = 0.5 * torch.stack(kl, dim=2) * traj.action_mask  # [B, T, N]
    team_return = traj.team_rewards.sum(1) - penalty.sum((1, 2))
    g = team_return.reshape(2, 4)
    expected = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-6)).reshape(8)
    targets = trainer.parts.learner.targets(traj, scores)
    torch.testing.assert_close(targets.agents[0].advantages, expected, atol=1e-5, rtol=1e-5)


class CountingEnv:
    """An env that marft knows nothing of: say the number; correct when the reply contains it."""

    problems = [("red", "red"), ("green", "green"), ("blue", "blue")]

    def __init__(self) -> None:
        self.index = 0

    def reset(self, seed=None):
        return self.reset_to(0)

    def reset_to(self, index):
        self.index = index
        return Observation(text=f"name the secret colour {self.problems[index][0]}")

    def vocabulary(self):
        return [p for p, _ in self.problems]

    def step(self, actions):
        said = actions["listener"]
        right = self.problems[self.index][1] in said
        return StepResult(Observation(text=""), float(right), True, correct=right, answer=said or None)


def test_eval_reads_correctness_from_the_env_step(tmp_path):
    from marft.eval.evaluate import Evaluator

    cfg = load_config(
        "demo",
        ["env.name=tests.test_seams:CountingEnv", "env.kwargs={}", "run.progress=false", "sampling.top_k=1"],
    )
    ev = Evaluator(cfg, samples=2, batch=6, progress=False)
    run = ev.run()
    assert [r.index for r in run.results] == [0, 1, 2]
    for r, t in zip(run.results, run.transcripts[::2], strict=True):
        said = t["turns"][-1]["agents"][-1]["response"]
        assert r.correct[0] == (CountingEnv.problems[r.index][1] in said)
    summary = ev.summarize(run.results)
    assert 0.0 <= summary["accuracy"] <= 1.0 and "maj@2" in summary


def test_an_env_without_a_notion_of_correct_is_a_clear_error(tmp_path, monkeypatch):
    from marft.config import ConfigError
    from marft.eval.evaluate import Evaluator

    monkeypatch.setattr(CountingEnv, "step", lambda self, a: StepResult(Observation(text=""), 0.0, True))
    cfg = load_config(
        "demo", ["env.name=tests.test_seams:CountingEnv", "env.kwargs={}", "run.progress=false"]
    )
    with pytest.raises(ConfigError, match="does not say whether an answer is correct"):
        Evaluator(cfg, samples=1, batch=3, progress=False).run()
