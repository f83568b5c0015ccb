"""Rollout workers and learners on a local Ray instance (2 CPUs): K = 1 and K = 2 rollout workers
give the same run, a worker killed with SIGKILL mid-collection is restarted and its iteration
redone, a run resumes under Ray (from a checkpoint written with another K), G = 2 data-parallel
learners give the adapters of one, a learner that dies stops the run with its checkpoint, and each
rollout worker judges judged work with its own judge."""

import os
import signal
import threading
import time

import pytest
import torch

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

from marft.compose import load_config  # noqa: E402
from marft.config import ConfigError  # noqa: E402
from marft.reporting.metrics import reproducible  # noqa: E402
from marft.trainer import Trainer  # noqa: E402
from marft.trainer.checkpoint import latest_checkpoint  # noqa: E402
from tests.fixtures.record_same_numbers import tensors_of  # noqa: E402

COMMON = [
    "env.n_envs=8",
    "run.torch_threads=1",
    "run.progress=false",
    "run.loggers=[]",
    "run.report=false",
    "run.checkpoint_every=2",
    "run.keep_checkpoints=0",
    "run.ray.address=local",
    "sampling.max_new_tokens=6",
]
# What measures the scale itself: timings, bytes, restarts, and the gap between a worker's sampling
# log-probs and the learner's (a forward over a batch of another size rounds differently, ~1e-6).
SCALE_ONLY = ("trajectory_bytes", "adapter_bytes_sent", "rollout_restarts", "logprob_gap")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def train(tmp_path, name, *overrides, iterations=4, resume=False, during=None, preset="demo"):
    cfg = load_config(preset, [*COMMON, f"run.iterations={iterations}", *overrides])
    trainer = Trainer(cfg, tmp_path / name, resume=resume)
    trainer.setup()
    if during is not None:
        during(trainer)
    result = trainer.train()
    rows = [{k: v for k, v in reproducible(r).items() if not k.startswith(SCALE_ONLY)} for r in result.rows]
    return trainer, result, rows


def assert_same_run(a, b):
    (ta, _, rows_a), (tb, _, rows_b) = a, b
    assert len(rows_a) == len(rows_b)
    for x, y in zip(rows_a, rows_b, strict=True):
        assert x == y, {k: (x[k], y.get(k)) for k in x if x[k] != y.get(k)}
    sa, sb = tensors_of(ta.parts.model), tensors_of(tb.parts.model)
    assert {k: v["sha256"] for k, v in sa.items()} == {k: v["sha256"] for k, v in sb.items()}


@pytest.fixture(scope="module")
def k1_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("k1"), "run", "run.ray.rollout_workers=1")


def test_one_and_two_rollout_workers_give_the_same_run(tmp_path, k1_run):
    k2 = train(tmp_path, "k2", "run.ray.rollout_workers=2")
    assert_same_run(k1_run, k2)
    row = k2[1].rows[-1]
    assert row["adapter_bytes_sent"] > 0 and row["trajectory_bytes"] > 0 and row["rollout_restarts"] == 0


def test_group_algorithms_give_the_same_run_with_two_workers(tmp_path):
    grpo = ["algorithm.name=grpo", "algorithm.group_size=4", "run.checkpoint_every=0"]
    one = train(tmp_path, "g1", "run.ray.rollout_workers=1", *grpo, iterations=3)
    two = train(tmp_path, "g2", "run.ray.rollout_workers=2", *grpo, iterations=3)
    assert_same_run(one, two)


def kill_during_third_collection(killed):
    """A ``during`` hook: SIGKILL rollout worker 1 shortly after the third collection starts (its
    pid goes into ``killed``)."""

    def install(trainer):
        rollout = trainer.parts.sampler
        collect, calls = rollout.collect, []

        def collect_and_kill(steps):
            calls.append(steps)
            if len(calls) == 3:
                pid = rollout.worker_pids()[1]

                def kill():
                    time.sleep(0.05)
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

                threading.Thread(target=kill).start()
            return collect(steps)

        rollout.collect = collect_and_kill

    return install


def test_a_worker_killed_mid_collection_is_restarted_and_nothing_is_lost(tmp_path, k1_run):
    killed = []
    run = train(tmp_path, "kill", "run.ray.rollout_workers=2", during=kill_during_third_collection(killed))
    assert killed
    restarts = [r["rollout_restarts"] for r in run[1].rows]
    assert restarts[:2] == [0, 0] and restarts[2] >= 1  # the third iteration was redone
    metrics = (tmp_path / "kill" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 4  # every iteration logged exactly once
    assert_same_run(k1_run, run)  # and nothing changed: the same samples, the same adapters


def test_a_worker_killed_between_collection_and_adapter_sync_is_restarted_too(tmp_path, k1_run):
    def kill_before_second_sync(trainer):
        rollout = trainer.parts.sampler
        update, calls = rollout.update_weights, []

        def kill_then_update(version, weights, changed=None):
            calls.append(version)
            if len(calls) == 2:  # the sync after the second iteration's update
                os.kill(rollout.worker_pids()[0], signal.SIGKILL)
            return update(version, weights, changed)

        rollout.update_weights = kill_then_update

    run = train(tmp_path, "sync", "run.ray.rollout_workers=2", during=kill_before_second_sync)
    assert [r["rollout_restarts"] for r in run[1].rows] == [0, 1, 1, 1]
    assert_same_run(k1_run, run)


def test_a_run_resumes_under_ray_from_a_checkpoint_of_another_worker_count(tmp_path, k1_run):
    train(tmp_path, "r", "run.ray.rollout_workers=2", iterations=2)
    assert latest_checkpoint(tmp_path / "r").name == "iter-000002"
    resumed = train(tmp_path, "r", "run.ray.rollout_workers=1", iterations=4, resume=True)
    assert_same_run(k1_run, resumed)


def test_a_shared_adapter_team_gives_the_same_run_with_two_workers(tmp_path):
    shared = ["lora.shared=true", "run.checkpoint_every=0"]
    one = train(tmp_path, "s1", "run.ray.rollout_workers=1", *shared, iterations=2)
    two = train(tmp_path, "s2", "run.ray.rollout_workers=2", *shared, iterations=2)
    assert_same_run(one, two)
    assert list(two[0].parts.model.adapter_weights()) == ["shared"]


def test_a_routing_team_gives_the_same_run_with_two_workers(tmp_path):
    # Env copies of different slices take different routes; the merged trajectory (routes and
    # route counters included) trains exactly as one process would.
    one = train(
        tmp_path, "r1", "run.ray.rollout_workers=1", "run.checkpoint_every=0", iterations=2, preset="routing"
    )
    two = train(
        tmp_path, "r2", "run.ray.rollout_workers=2", "run.checkpoint_every=0", iterations=2, preset="routing"
    )
    assert_same_run(one, two)
    assert any(k.startswith("route_share/") for k in two[2][-1])


def test_a_judged_team_is_judged_on_each_rollout_worker(tmp_path):
    # Each worker judges its own slice with its own copy of the judge (the base with adapters off).
    # A judge batch of other prompts pads differently, so scores agree to float rounding, not bit
    # for bit: judged runs under Ray are not bit-identical to one process (docs/judged.md).
    judged = ["model.tiny.initializer_range=0.2", "run.checkpoint_every=0", "algorithm.micro_batch_tokens=0"]
    judged += ["team.agents.0.max_new_tokens=4", "team.agents.1.max_new_tokens=6", "model.name=tiny"]
    one = train(tmp_path, "j1", "run.ray.rollout_workers=1", *judged, iterations=1, preset="slides_team")
    two = train(tmp_path, "j2", "run.ray.rollout_workers=2", *judged, iterations=1, preset="slides_team")
    a, b = one[1].rows[0], two[1].rows[0]
    for key in ("judge_score", "heldout_score", "rules_pass", "response_words"):
        assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert a["judge_calls"] + a["judge_cache_hits"] == b["judge_calls"] + b["judge_cache_hits"] == 8


def test_too_many_workers_for_the_env_copies_is_a_config_error():
    with pytest.raises(ConfigError, match="run.ray.rollout_workers"):
        load_config("demo", ["env.n_envs=8", "run.ray.address=local", "run.ray.rollout_workers=9"])
    with pytest.raises(ConfigError, match="groups of 4"):
        load_config(
            "demo",
            [
                "env.n_envs=8",
                "algorithm.name=grpo",
                "algorithm.group_size=4",
                "run.ray.address=local",
                "run.ray.rollout_workers=3",
            ],
        )


LEARNERS = ["run.ray.rollout_workers=1", "run.ray.worker_cpus=0.5", "run.ray.learner_cpus=0.5"]


def test_two_data_parallel_learners_give_the_adapters_of_one(tmp_path):
    one = train(tmp_path, "l1", *LEARNERS, "run.ray.learners=1", "run.checkpoint_every=0")
    copies = {}

    def keep_rank1_adapters(trainer):
        close = trainer.close

        def close_after_reading():
            copies["rank1"] = trainer.peers.learners.adapters(1)
            close()

        trainer.close = close_after_reading

    two = train(
        tmp_path, "l2", *LEARNERS, "run.ray.learners=2", "run.checkpoint_every=0", during=keep_rank1_adapters
    )
    a = dict(one[0].parts.model.policy.named_parameters())
    b = dict(two[0].parts.model.policy.named_parameters())
    trained = [n for n in a if "lora_" in n or "modules_to_save" in n]
    assert max(float((a[n] - b[n]).abs().max()) for n in trained) < 1e-5
    head_a, head_b = one[0].parts.model.value_head.state_dict(), two[0].parts.model.value_head.state_dict()
    assert all(torch.allclose(head_a[k], head_b[k], atol=1e-5) for k in head_a)
    # the second learner holds exactly the driver's adapters: both took the same summed steps
    driver = two[0].parts.model.adapter_weights()
    for role, tensors in copies["rank1"].items():
        for name, t in tensors.items():
            assert torch.equal(t, driver[role][name].cpu()), (role, name)
    for x, y in zip(one[2], two[2], strict=True):
        for k, v in x.items():
            assert v == pytest.approx(y[k], rel=1e-4, abs=1e-6), k


def test_a_learner_that_dies_stops_the_run_with_its_checkpoint_and_the_resume_command(tmp_path):
    from marft.trainer.trainer import TrainingStopped

    def kill_learner_in_third_iteration(trainer):
        run_iteration = trainer.run_iteration

        def run_and_kill(it):
            if it == 2:
                os.kill(trainer.peers.learners.pids()[0], signal.SIGKILL)
            return run_iteration(it)

        trainer.run_iteration = run_and_kill

    args = (*LEARNERS, "run.ray.learners=2", "run.ray.learner_timeout_s=60")
    with pytest.raises(TrainingStopped) as stop:
        train(tmp_path, "dies", *args, during=kill_learner_in_third_iteration)
    assert "marft train --resume" in str(stop.value) and "learner failed in iteration 2" in str(stop.value)
    assert stop.value.checkpoint.name == "iter-000002"
    assert len((tmp_path / "dies" / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = train(tmp_path, "dies", *args, resume=True)
    assert [r["iteration"] for r in resumed[1].rows] == [0, 1, 2, 3]


def test_marft_train_under_ray_then_report_and_eval_work_as_in_one_process(tmp_path):
    import json

    from tests.test_eval import math_config, run_cli

    cfg = math_config(tmp_path)
    ray_args = [
        "--set",
        "run.ray.address=local",
        "--set",
        "run.ray.rollout_workers=2",
        "--set",
        "run.iterations=2",
    ]
    train = run_cli(
        "train", str(cfg), *ray_args, "--set", "run.ray.worker_cpus=0.5", "--out", str(tmp_path / "run")
    )
    assert train.returncode == 0, train.stderr[-3000:]
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1] and all(r["grader_calls"] > 0 for r in rows)
    assert (run / "report.html").exists()
    ev = run_cli(
        "eval", "--checkpoint", str(run), "--limit", "4", "--no-ablation", "--out", str(tmp_path / "e")
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["n_problems"] == 4


def test_actors_build_on_the_device_ray_gives_them_not_the_drivers():
    from marft.distributed.cluster import actor_config

    cfg = load_config("demo", ["model.device=cuda:7", "run.ray.address=local"])
    mine = actor_config(cfg)
    assert mine.model.device == "auto" and cfg.model.device == "cuda:7"
    assert mine.team == cfg.team and mine.run == cfg.run
