"""The trainer's small parts: the run state's save/restore pair, the token budget, the stop
signals, the typed stats' metrics row and the fault checks that read those stats."""

import math
import os
import signal

import pytest

from marft.config import parse_config
from marft.learner.stats import AdapterStats, AdvantageStats, CriticStats, PolicyStats, ScoreStats
from marft.rollout.stats import CollectStats
from marft.trainer.faults import check_faults
from marft.trainer.signals import StopSignals
from marft.trainer.state import RunState, TokenBudget
from marft.trainer.stats import IterationStats, metrics_row


def collect_stats(returns=(1.0, 0.0, 0.5), failed=0) -> CollectStats:
    return CollectStats(
        env_steps=6,
        generated_tokens=40,
        episode_returns=list(returns),
        episodes_failed=failed,
        timings={"generate": 2.0, "env": 0.5},
        env={"grader_timeouts": 1.0},
        routes={},
        sampler={"worker_restarts": 0.0},
    )


def policy_stats(trained=(), nonfinite=(), untrained=()) -> PolicyStats:
    adapters = {a: AdapterStats(policy_loss=-0.1, nonfinite=a in nonfinite) for a in trained}
    adapters.update({a: AdapterStats(trained=False) for a in untrained})
    return PolicyStats(adapters=adapters, fwd_bwd_s=1.5)


def critic_stats(nonfinite=False) -> CriticStats:
    return CriticStats(3.0, nonfinite, value_mean=0.1, return_target_mean=0.2, explained_variance=0.5)


def iteration(
    policy: PolicyStats, collect: CollectStats | None = None, critic: CriticStats | None = None
) -> IterationStats:
    return IterationStats(
        trajectory=None,
        collect=collect or collect_stats(),
        score=ScoreStats(),
        advantages=AdvantageStats(kl_ref={"a": 0.25}),
        critic=critic or CriticStats.absent(),
        policy=policy,
        timings={"collect": 1.0, "policy": 2.0},
        memory={"memory_rss_mb": 100.0},
    )


def test_run_state_round_trips_and_reads_checkpoints_from_before_versions_and_budgets():
    state = RunState(
        iteration=4, version=4, env_steps=64, generated_tokens=900, elapsed_s=12.5, nonfinite_in_row={"a": 1}
    )
    again = RunState.from_state_dict(state.state_dict())
    assert again == state and again.nonfinite_in_row is not state.nonfinite_in_row
    old = {"iteration": 3, "env_steps": 48, "elapsed_s": 9.0, "nonfinite_in_row": {}}
    assert RunState.from_state_dict(old) == RunState(iteration=3, version=3, env_steps=48, elapsed_s=9.0)


def test_token_budget_is_spent_at_its_limit_and_shows_in_the_progress_bar():
    budget = TokenBudget(100)
    assert not budget.spent(RunState(generated_tokens=99))
    assert budget.spent(RunState(generated_tokens=100))
    assert budget.progress(RunState(generated_tokens=42)) == {"tokens": "42/100"}
    assert not TokenBudget(None).spent(RunState(generated_tokens=10**9))
    assert TokenBudget(None).progress(RunState()) == {}


def test_a_signal_inside_the_context_is_recorded_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM and signals.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_collect_stats_give_the_rollout_columns():
    got = collect_stats().metrics()
    assert got["episode_return"] == pytest.approx(0.5)  # (1 + 0 + 0.5) / 3
    assert got["episodes"] == 3 and got["episodes_failed"] == 0
    assert got["time_generate_s"] == 2.0 and got["time_env_s"] == 0.5
    assert got["grader_timeouts"] == 1.0
    assert math.isnan(collect_stats(returns=()).episode_return)


def test_metrics_row_puts_every_phase_in_one_row():
    state = RunState(iteration=3, env_steps=50, generated_tokens=700, elapsed_s=30.0)
    stats = iteration(policy_stats(trained=["a"], untrained=["b"]), critic=critic_stats())
    row = metrics_row(2, state, stats, {"time_log_s": 0.1})
    assert row["iteration"] == 2 and row["env_steps"] == 50 and row["generated_tokens"] == 700
    assert row["time_s"] == 30.0 and row["time_iter_s"] == 3.0 and row["time_policy_s"] == 2.0
    assert row["policy_loss/a"] == -0.1 and row["value_loss"] == 3.0 and row["kl_ref/a"] == 0.25
    assert row["policy_loss/b"] == 0.0 and "nonfinite_skip/b" not in row and row["time_fwd_bwd_s"] == 1.5
    assert row["explained_variance"] == 0.5 and row["worker_restarts"] == 0.0
    assert row["time_log_s"] == 0.1 and row["memory_rss_mb"] == 100.0 and row["episodes"] == 3


def test_faults_count_non_finite_skips_in_a_row_from_the_typed_stats():
    cfg = parse_config("demo")
    cfg.run.max_nonfinite_in_row = 2
    in_row: dict[str, int] = {}
    skipped = policy_stats(trained=["a", "b"], nonfinite=["a"])
    assert check_faults(0, iteration(skipped), in_row, cfg) is None
    assert in_row == {"a": 1, "b": 0}
    # an adapter that did not train this iteration keeps its count
    assert check_faults(1, iteration(policy_stats(trained=["b"], untrained=["a"])), in_row, cfg) is None
    assert in_row == {"a": 1, "b": 0}
    message = check_faults(2, iteration(skipped), in_row, cfg)
    assert message is not None and message.startswith("a's loss or gradient was not finite in 2 iterations")
    assert check_faults(3, iteration(policy_stats(trained=["a"])), in_row, cfg) is None and in_row["a"] == 0


def test_faults_count_the_critics_non_finite_fits_too():
    cfg = parse_config("demo")
    cfg.run.max_nonfinite_in_row = 2
    in_row: dict[str, int] = {}
    bad = iteration(policy_stats(trained=["a"]), critic=critic_stats(nonfinite=True))
    assert check_faults(0, bad, in_row, cfg) is None and in_row == {"a": 0, "critic": 1}
    message = check_faults(1, bad, in_row, cfg)
    assert message is not None and message.startswith("critic's loss or gradient was not finite in 2")


def test_faults_stop_on_too_many_failed_episodes():
    cfg = parse_config("demo")
    cfg.env.max_failure_rate = 0.5
    quiet = policy_stats(trained=["a"])
    assert check_faults(0, iteration(quiet, collect_stats(returns=(1.0,), failed=1)), {}, cfg) is None
    message = check_faults(4, iteration(quiet, collect_stats(returns=(1.0,), failed=2)), {}, cfg)
    assert message is not None and message.startswith("2 of 3 episodes failed in iteration 4")
