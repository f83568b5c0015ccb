"""The learner's typed stats: each phase's metric columns, the critic's explained variance, and
the loss aggregation an algorithm resolves to (``algorithm.loss_agg_mode``)."""

import math

import pytest
import torch

from marft.compose import load_config
from marft.config import AlgorithmConfig, ConfigError
from marft.learner import (
    AdapterStats,
    AdvantageStats,
    AgentStats,
    CriticStats,
    LogprobGap,
    PolicyStats,
    ScoreStats,
    TisStats,
    resolve_algorithm,
)
from marft.learner.critic import CriticBatch, CriticFitter


def test_policy_stats_give_the_row_columns_and_who_was_trained():
    stats = PolicyStats(
        agents={"speaker": AgentStats(0.5, 3.0), "listener": AgentStats(0.25, 2.0)},
        adapters={
            "speaker": AdapterStats(False),
            "listener": AdapterStats(True, -0.1, 0.01, 0.2, 2, kl_early_stop=True),
            "judge": AdapterStats(True, nonfinite=True),
        },
        fwd_bwd_s=1.5,
    )
    assert stats.trained == ["listener", "judge"] and stats.nonfinite == ["judge"]
    m = stats.metrics()
    assert m["entropy/speaker"] == 0.5 and m["response_tokens/listener"] == 2.0
    # an adapter not trained reports only a zero loss and KL
    speaker = {k: v for k, v in m.items() if k.endswith("/speaker")}
    assert speaker == {
        "entropy/speaker": 0.5,
        "response_tokens/speaker": 3.0,
        "policy_loss/speaker": 0.0,
        "approx_kl/speaker": 0.0,
    }
    assert m["policy_loss/listener"] == -0.1 and m["clipfrac/listener"] == 0.2
    assert m["optimizer_steps/listener"] == 2.0 and m["kl_early_stop/listener"] == 1.0
    assert m["nonfinite_skip/listener"] == 0.0 and m["nonfinite_skip/judge"] == 1.0
    assert math.isnan(m["policy_loss/judge"]) and m["time_fwd_bwd_s"] == 1.5
    assert all(isinstance(v, float) for v in m.values())


def test_advantage_score_and_critic_stats_give_the_row_columns():
    adv = AdvantageStats(
        kl_ref={"a": 0.1}, estimator={"group_return_std": 0.5}, tis={"a": TisStats(1.0, 0.0)}
    )
    assert adv.metrics() == {
        "kl_ref/a": 0.1,
        "group_return_std": 0.5,
        "tis_weight_mean/a": 1.0,
        "tis_capped/a": 0.0,
    }
    assert ScoreStats({"a": LogprobGap(0.1, 0.3)}).metrics() == {
        "logprob_gap_mean/a": 0.1,
        "logprob_gap_max/a": 0.3,
    }
    assert CriticStats.absent().metrics() == {}  # an algorithm without a critic: no columns
    critic = CriticStats(0.2, False, 1.0, 2.0, 0.85)
    assert critic.metrics() == {
        "value_loss": 0.2,
        "nonfinite_skip/critic": 0.0,
        "value_mean": 1.0,
        "return_target_mean": 2.0,
        "explained_variance": 0.85,
    }


class _Head(torch.nn.Module):
    """A linear value head on 1-feature inputs (``[..., 1] -> [...]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)[..., 0]


def test_the_critic_reports_the_explained_variance_of_its_values_before_the_fit():
    torch.manual_seed(0)
    # real entries: values (1, 2, 3, 3) for returns (1, 2, 3, 4); a padded entry must not count.
    # var(returns) = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25; residuals (0, 0, 0, 1): variance
    # (3 * 0.0625 + 0.5625) / 4 = 0.1875 -> 1 - 0.1875 / 1.25 = 0.85
    old_values = torch.tensor([1.0, 2.0, 3.0, 3.0, 100.0])
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0, -100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    batch = CriticBatch(torch.randn(5, 1), old_values, returns, mask)
    stats = CriticFitter(_Head(), AlgorithmConfig()).fit(batch)
    assert stats.explained_variance == pytest.approx(0.85)
    assert stats.value_mean == pytest.approx(2.25) and stats.return_target_mean == pytest.approx(2.5)
    assert stats.value_loss > 0 and not stats.nonfinite
    assert stats.metrics()["explained_variance"] == stats.explained_variance
    # returns that do not vary explain nothing: NaN, not a division by zero, and no column
    flat = CriticBatch(torch.randn(3, 1), torch.zeros(3), torch.ones(3), torch.ones(3))
    flat_stats = CriticFitter(_Head(), AlgorithmConfig()).fit(flat)
    assert math.isnan(flat_stats.explained_variance) and "explained_variance" not in flat_stats.metrics()


@pytest.mark.parametrize(
    ("name", "mode"),
    [("appo", "action-mean"), ("tppo", "token-mean"), ("grpo", "token-mean"), ("rloo", "token-mean")],
)
def test_each_algorithm_has_its_default_aggregation(name, mode):
    assert resolve_algorithm(AlgorithmConfig(name=name)).agg_mode == mode


def test_a_configured_aggregation_replaces_the_default_where_it_fits():
    cfg = AlgorithmConfig(name="appo", loss_agg_mode="seq-mean-token-sum")
    assert resolve_algorithm(cfg).agg_mode == "seq-mean-token-sum"
    assert (
        resolve_algorithm(AlgorithmConfig(name="grpo", loss_agg_mode="action-mean")).agg_mode == "action-mean"
    )
    # per-token advantages (tppo) have no single advantage per action
    with pytest.raises(ConfigError, match=r"algorithm\.loss_agg_mode.*token-mean, seq-mean-token-sum"):
        load_config("demo", ["algorithm.name=tppo", "algorithm.loss_agg_mode=action-mean"])
    with pytest.raises(ConfigError, match=r"algorithm\.loss_agg_mode.*'token-mean', 'seq-mean-token-sum'"):
        load_config("demo", ["algorithm.loss_agg_mode=seq-mean"])
