"""Recomputing old log-probs of an agent that never acted in a collection (a routed expert that no
router chose): zeros, and no forward on an empty batch."""

import dataclasses

import torch

from marft.trainer import Trainer
from tests.conftest import small_config


def test_an_agent_without_actions_gets_zero_old_logprobs(tmp_path):
    trainer = Trainer(small_config("algorithm.recompute_old_logprobs=true"), tmp_path / "run")
    trainer.setup()
    traj = trainer.parts.sampler.collect(trainer.steps_per_rollout)
    listener = traj.agents[1]
    silent = dataclasses.replace(listener, response_mask=torch.zeros_like(listener.response_mask))
    traj.agents[1] = silent
    calls = []
    forward = trainer.parts.model.action_logprobs
    trainer.parts.model.action_logprobs = lambda batch, *a, **k: (
        calls.append(len(batch.prompt_ids)) or forward(batch, *a, **k)
    )
    lp, ent = trainer.parts.scorer._recompute("listener", traj, 1)
    assert calls == [] and lp.abs().max() == 0 and ent.abs().max() == 0
    trainer.parts.scorer._recompute("speaker", traj, 0)
    assert calls  # the speaker acted: its rows were scored
