"""Asynchronous rollouts on Ray (``run.ray.async.max_staleness``): collections in flight while the
learner trains, each agent's staleness bounded and logged, the decoupled-PPO correction applied,
exact across resumes and a worker killed mid-flight.

Runs are compared at one worker count: the correction weighs advantages by the sampler's
log-probs, and a worker's forward over a batch of another size rounds them differently (~1e-6),
so, unlike synchronous runs without it, K = 1 and K = 2 agree to rounding, not bit for bit."""

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

from marft.compose import load_config  # noqa: E402
from marft.config import ConfigError  # noqa: E402
from marft.distributed.async_rollout import staleness  # noqa: E402
from marft.trainer.checkpoint import latest_checkpoint  # noqa: E402
from tests.distributed.test_ray import (  # noqa: E402, F401
    assert_same_run,
    kill_during_third_collection,
    local_ray,
    train,
)

ASYNC = ["run.ray.async.max_staleness=1", "algorithm.rollout_correction=tis"]
RECOMPUTE = "run.ray.async.behaviour_logprobs=recompute"
ROLES = ("speaker", "listener")


@pytest.fixture(scope="module")
def async_k2(tmp_path_factory):
    return train(tmp_path_factory.mktemp("a2"), "run", "run.ray.rollout_workers=2", *ASYNC)


@pytest.fixture(scope="module")
def recompute_k2(tmp_path_factory):
    return train(tmp_path_factory.mktemp("r2"), "run", "run.ray.rollout_workers=2", *ASYNC, RECOMPUTE)


def test_staleness_per_adapter():
    assert staleness({"a": 3, "b": 1}, {"a": 2, "b": 1}) == {"a": 1, "b": 0}
    assert staleness({"a": 2}, {}) == {"a": 2}  # an adapter the trajectory does not name: version 0


def test_each_agents_staleness_and_correction_are_logged(async_k2):
    rows = async_k2[1].rows
    # iteration 0 trains on what version 0 sampled; every later one on what the version before sampled
    assert [[r[f"staleness/{role}"] for role in ROLES] for r in rows] == [[0, 0], [1, 1], [1, 1], [1, 1]]
    assert all(r["stale_dropped"] == 0 and r["in_flight"] == 1 for r in rows)
    for role in ROLES:  # the correction to the sampler's policy, per agent
        assert all(0 < r[f"tis_weight_mean/{role}"] <= 2.0 for r in rows)


def test_an_asynchronous_run_is_off_policy_by_one_version(tmp_path, async_k2):
    """The first iteration trains on the same collection as a synchronous run; the second, on
    one sampled with the first version's adapters, so the runs part from there."""
    sync = train(tmp_path, "sync", "run.ray.rollout_workers=2", "algorithm.rollout_correction=tis")
    a, s = async_k2[2], sync[2]
    assert a[0]["episode_return"] == s[0]["episode_return"]
    assert a[0]["tis_weight_mean/speaker"] == s[0]["tis_weight_mean/speaker"]
    assert [r["episode_return"] for r in a[1:]] != [r["episode_return"] for r in s[1:]]


@pytest.mark.parametrize("behaviour", ["sampler", "recompute"])
def test_an_asynchronous_run_resumes_exactly_with_what_it_had_in_flight(tmp_path, behaviour, request):
    """The collection in flight at the checkpoint is saved as what launches it (the env copies'
    state before it, its versions and adapters); the resumed run collects it again first."""
    whole = request.getfixturevalue("async_k2" if behaviour == "sampler" else "recompute_k2")
    extra = [*ASYNC, f"run.ray.async.behaviour_logprobs={behaviour}"]
    train(tmp_path, "r", "run.ray.rollout_workers=2", *extra, iterations=2)
    assert latest_checkpoint(tmp_path / "r").name == "iter-000002"
    resumed = train(tmp_path, "r", "run.ray.rollout_workers=2", *extra, iterations=4, resume=True)
    assert_same_run(whole, resumed)
    assert [r["staleness/speaker"] for r in resumed[1].rows[2:]] == [1, 1]  # the relaunched one first


def test_a_worker_killed_with_collections_in_flight_is_restarted_and_they_are_collected_again(
    tmp_path, async_k2
):
    killed = []
    run = train(
        tmp_path, "kill", "run.ray.rollout_workers=2", *ASYNC, during=kill_during_third_collection(killed)
    )
    assert killed
    assert run[1].rows[-1]["rollout_restarts"] >= 1
    assert len((tmp_path / "kill" / "metrics.jsonl").read_text().splitlines()) == 4  # each logged once
    assert_same_run(async_k2, run)  # the same samples, the same adapters


def test_the_learner_recomputes_the_behaviour_logprobs_under_the_adapters_that_sampled(
    async_k2, recompute_k2
):
    """``behaviour_logprobs: recompute``: a stale agent's log-probs come from the learner's forward
    under the adapters the trajectory was sampled with. With the HF backend they equal the
    sampler's to rounding, so the run follows the one with the sampler's log-probs; had the
    current adapters been used, every importance weight would be exactly 1."""
    rows, want = recompute_k2[1].rows, async_k2[1].rows
    assert all("time_behaviour_s" in r for r in rows)
    for role in ROLES:
        got = [r[f"tis_weight_mean/{role}"] for r in rows]
        assert got == pytest.approx([r[f"tis_weight_mean/{role}"] for r in want], abs=1e-3)
    # the old adapters, not the new ones (those give the proximal log-probs: weights of exactly 1)
    assert max(abs(r["tis_weight_mean/listener"] - 1) for r in rows[1:]) > 1e-3
    assert [r["episode_return"] for r in rows] == pytest.approx([r["episode_return"] for r in want], abs=0.02)


def test_a_trajectory_more_versions_behind_than_allowed_is_dropped_and_collected_again(tmp_path):
    def two_updates_after_the_second_iteration(trainer):
        rollout = trainer.parts.sampler
        update, calls = rollout.update_weights, []

        def update_twice(version, weights, changed=None):
            calls.append(version)
            if len(calls) == 2 and changed is not None:
                update(version, weights, changed)  # the in-flight collection falls 2 versions behind
            return update(version, weights, changed)

        rollout.update_weights = update_twice

    run = train(
        tmp_path, "drop", "run.ray.rollout_workers=1", *ASYNC, during=two_updates_after_the_second_iteration
    )
    rows = run[1].rows
    assert [r["stale_dropped"] for r in rows] == [0, 0, 1, 0]
    assert all(r["staleness/speaker"] <= 1 for r in rows)


def test_asynchronous_rollouts_need_ray_and_the_correction():
    with pytest.raises(ConfigError, match="run.ray.async.max_staleness: asynchronous rollouts run on Ray"):
        load_config("demo", ["run.ray.async.max_staleness=1", "algorithm.rollout_correction=tis"])
    with pytest.raises(ConfigError, match="rollout_correction=tis"):
        load_config("demo", ["run.ray.address=local", "run.ray.async.max_staleness=1"])
    with pytest.raises(ConfigError, match="run.ray.async.max_staleness: must be >= 0"):
        load_config("demo", ["run.ray.async.max_staleness=-1"])
