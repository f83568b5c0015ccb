"""The live batcher: every ready agent of every task in one generation call, tasks joining at the
next call, cancelled tasks leaving before it, and the same replies batched as alone."""

from __future__ import annotations

import torch

from marft.models.row_adapters import BASE
from marft.serve import load_team
from tests.serve.conftest import QUICK, Recording


def test_tasks_in_flight_share_each_generation_call(demo_team):
    team, rec = demo_team
    batcher = team.batcher(max_tasks=8)
    seen = []
    replies = batcher.run([team.observation(f"secret {c}") for c in ("red", "green", "blue")], seen.append)
    # two levels (speaker, then listener) for three tasks: two calls of three rows, not six calls
    assert [len(a) for a, _ in rec.calls] == [3, 3]
    assert batcher.calls == 2 and batcher.rows == 6
    assert [m.role for m in seen] == ["speaker"] * 3 + ["listener"] * 3
    for reply in replies:
        assert [m.role for m in reply.messages] == ["speaker", "listener"]
        assert reply.answer_role == "listener" and reply.answer == reply.messages[-1].text
        assert reply.route == "speaker>listener"
        assert reply.tokens == {"speaker": reply.messages[0].tokens, "listener": reply.messages[1].tokens}
        assert all(m.prompt_tokens > 0 for m in reply.messages)
    # untrained: every row runs on the bare base
    assert set(rec.calls[0][0]) == {BASE}


def test_a_task_that_arrives_mid_batch_joins_the_next_call(demo_team):
    team, rec = demo_team
    team.checkpoint = object()  # pretend trained: rows name their agents' adapters
    batcher = team.batcher(max_tasks=8)
    first = [batcher.submit(team.observation("secret red")) for _ in range(2)]
    batcher.step()  # both speakers
    late = batcher.submit(team.observation("secret blue"))
    batcher.step()  # the two listeners and the late speaker: one mixed-adapter call
    while batcher.step():
        pass
    assert [sorted(a) for a, _ in rec.calls] == [
        ["speaker", "speaker"],
        ["listener", "listener", "speaker"],
        ["listener"],
    ]
    assert all(t.reply.finish_reason in ("stop", "length") for t in [*first, late])


def test_concurrency_bound_and_cancel(demo_team):
    team, rec = demo_team
    batcher = team.batcher(max_tasks=2)
    done = []
    tasks = [batcher.submit(team.observation("secret red"), on_done=done.append) for _ in range(3)]
    batcher.step()
    assert len(rec.calls[0][0]) == 2  # the third waits for a place
    batcher.cancel(tasks[0])
    batcher.step()
    # the cancelled task left before this call: the other's listener and the third's speaker
    assert len(rec.calls[1][0]) == 2
    while batcher.step():
        pass
    assert tasks[0].reply.finish_reason == "cancelled"
    assert [m.role for m in tasks[0].reply.messages] == ["speaker"]
    assert len(done) == 3 and batcher.pending == 0


def test_solo_agent_and_max_tokens(demo_team):
    team, rec = demo_team
    batcher = team.batcher()
    task = batcher.submit(team.observation("secret red"), solo="listener", max_tokens=1)
    while batcher.step():
        pass
    assert rec.calls == [([BASE], [1])]
    assert [m.role for m in task.reply.messages] == ["listener"]
    assert task.reply.messages[0].tokens == 1 and task.reply.finish_reason in ("length", "stop")


def test_batched_replies_equal_replies_alone(demo_run):
    """Greedy decoding: a task's reply does not depend on the tasks batched with it."""
    team = load_team(demo_run, overrides=[*QUICK, "sampling.top_k=1"])
    tasks = [f"secret {c}" for c in ("red", "green", "blue", "red")]
    together = team.batcher(max_tasks=8).run([team.observation(t) for t in tasks])
    alone = [team.batcher(max_tasks=1).run([team.observation(t)])[0] for t in tasks]
    assert [r.messages for r in together] == [r.messages for r in alone]


def test_trained_team_names_the_listener_secret(demo_run):
    """The 2-iteration demo run is not trained to the end: the check is only that the trained
    adapters (not the base) act: the replies differ from the untrained team's on some task."""
    torch.manual_seed(0)
    trained = load_team(demo_run, overrides=[*QUICK, "sampling.top_k=1"])
    base = load_team(demo_run, base=True, overrides=[*QUICK, "sampling.top_k=1"])
    assert trained.checkpoint is not None and base.checkpoint is None
    obs = [trained.observation(f"secret {c}") for c in ("red", "green", "blue")]
    rec = Recording(trained.backend)
    a = trained.batcher().run(obs)
    b = base.batcher().run(obs)
    assert set(rec.calls[0][0]) == {"speaker"}
    assert [r.messages for r in a] != [r.messages for r in b]


def test_routing_team_takes_routes():
    team = load_team("routing", base=True, overrides=QUICK)
    replies = team.batcher().run([team.observation("which expert knows the secret? alpha")] * 3)
    for reply in replies:
        roles = [m.role for m in reply.messages]
        assert reply.route == ">".join(roles) and roles[0] == team.cfg.team.routing.start[0]
        assert len(roles) >= 2
