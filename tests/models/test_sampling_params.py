"""SamplingParams: the sampling distribution as one value, and the warping it describes."""

import dataclasses
import math

import pytest
import torch

from marft.config import SamplingConfig
from marft.models import SamplingParams, warp_logits
from tests.conftest import small_config


def test_of_a_config_takes_its_three_fields():
    cfg = small_config("sampling.temperature=0.7", "sampling.top_k=5", "sampling.top_p=0.9")
    assert SamplingParams.of(cfg.sampling) == SamplingParams(temperature=0.7, top_k=5, top_p=0.9)
    assert SamplingParams.of(SamplingConfig()) == SamplingParams()  # the defaults agree


def test_is_a_frozen_value():
    params = SamplingParams(temperature=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 1.0  # type: ignore[misc]
    assert params == SamplingParams(0.5, 0, 1.0)
    assert hash(params) == hash(SamplingParams(0.5))


def test_default_params_leave_the_logits_as_they_are():
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0)).half()
    warped = warp_logits(logits, SamplingParams())
    assert warped.dtype == torch.float32
    assert torch.equal(warped, logits.float())


def test_warp_logits_top_k_top_p_temperature():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(warp_logits(logits, SamplingParams(top_k=2))[2:]).all()
    # top_p = 0.7: 0.5 < 0.7 so the second token is kept; the third starts at mass 0.8 -> dropped
    kept = ~torch.isinf(warp_logits(logits, SamplingParams(top_p=0.7)))
    assert kept.tolist() == [True, True, False, False]
    torch.testing.assert_close(warp_logits(logits, SamplingParams(temperature=2.0)), logits / 2.0)
    assert math.isclose(float(warp_logits(logits, SamplingParams(top_p=0.01)).softmax(-1)[0]), 1.0)
