"""What an update may and may not touch: active adapters move, everything else stays bit-identical."""

import json

import torch
from peft import PeftModel

from marft.compose import resolve, tiny_corpus
from marft.models import load_base
from marft.trainer import Trainer
from tests.conftest import collect_scored, small_config


def snapshot(trainer):
    m = trainer.parts.model
    return {
        "base": {n: p.detach().clone() for n, p in m.base_parameters()},
        **{r: [p.detach().clone() for p in m.adapter_parameters(r)] for r in m.roles},
        "value_head": [p.detach().clone() for p in m.value_head.parameters()],
    }


def changed(before, after, key):
    return any(not torch.equal(a, b) for a, b in zip(before[key], after[key], strict=True))


def base_identical(before, after):
    return all(torch.equal(before["base"][n], after["base"][n]) for n in before["base"])


def make_trainer(tmp_path, *overrides):
    trainer = Trainer(small_config(*overrides), tmp_path / "run")
    trainer.setup()
    return trainer


def one_iteration(trainer, it):
    return trainer.parts.learner.update(*collect_scored(trainer), it)


def test_every_trainable_adapter_and_the_critic_move_base_does_not(tmp_path):
    trainer = make_trainer(tmp_path)
    before = snapshot(trainer)
    result = one_iteration(trainer, 0)
    after = snapshot(trainer)
    assert set(result.trained) == {"speaker", "listener"}
    assert changed(before, after, "speaker") and changed(before, after, "listener")
    assert changed(before, after, "value_head")
    assert base_identical(before, after)
    # every single trainable tensor received an update, not just some
    for r in ("speaker", "listener"):
        assert all(not torch.equal(a, b) for a, b in zip(before[r], after[r], strict=True))


def test_agent_by_agent_touches_only_the_active_adapter(tmp_path):
    trainer = make_trainer(tmp_path, "algorithm.agent_by_agent=2")
    order = [trainer.parts.learner.roles_to_train(i) for i in range(5)]
    assert order == [["speaker"], ["speaker"], ["listener"], ["listener"], ["speaker"]]
    for it, active in [(0, "speaker"), (2, "listener")]:
        before = snapshot(trainer)
        result = one_iteration(trainer, it)
        after = snapshot(trainer)
        other = {"speaker": "listener", "listener": "speaker"}[active]
        assert result.trained == [active]
        assert changed(before, after, active)
        assert not changed(before, after, other)  # bit-identical, not merely close
        assert base_identical(before, after)


def test_frozen_agent_and_critic_warmup(tmp_path):
    trainer = make_trainer(tmp_path, "team.agents.0.trainable=false", "algorithm.critic_warmup_iters=1")
    before = snapshot(trainer)
    assert one_iteration(trainer, 0).trained == []  # warm-up: critic only
    mid = snapshot(trainer)
    assert not changed(before, mid, "listener") and changed(before, mid, "value_head")
    assert one_iteration(trainer, 1).trained == ["listener"]
    after = snapshot(trainer)
    assert changed(mid, after, "listener")
    assert not changed(before, after, "speaker")
    assert base_identical(before, after)


def test_run_directory_contents_and_standalone_adapters(tmp_path):
    cfg = small_config("run.loggers=[tensorboard]", "run.iterations=2")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    result = trainer.train()
    run = tmp_path / "run"
    assert (run / "config.yaml").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    required = [
        "iteration",
        "env_steps",
        "episode_return",
        "time_s",
        *(
            f"time_{phase}_s"
            for phase in ("collect", "generate", "score", "advantages", "critic", "policy", "log")
        ),
        "time_checkpoint_s",  # of the checkpoint saved after the previous iteration
        "memory_peak_mb",
        *(f"memory_peak_{phase}_mb" for phase in ("collect", "score", "policy")),
        "memory_rss_mb",
        "value_loss",
    ]
    for role in ("speaker", "listener"):
        required += [f"policy_loss/{role}", f"approx_kl/{role}", f"entropy/{role}"]
    for key in required:
        assert key in rows[-1], key
    assert rows[-1]["env_steps"] == 2 * 8
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    transcript = json.loads((run / "transcripts.jsonl").read_text().splitlines()[0])
    turn = transcript["turns"][0]
    assert [a["role"] for a in turn["agents"]] == ["speaker", "listener"]
    assert turn["agents"][1]["messages"][-1]["content"].endswith("speaker: " + turn["agents"][0]["response"])
    ckpt = result.checkpoint
    assert (ckpt / "value_head.pt").exists() and (ckpt / "optimizers.pt").exists()

    # Each adapter folder loads with PEFT alone and reproduces the trained agent.
    base, _ = load_base(cfg.model, tiny_corpus(resolve(cfg), trainer.parts.sampler.envs[0]))
    ids = torch.tensor([[5, 6, 7, 8]])
    for role in ("speaker", "listener"):
        standalone = PeftModel.from_pretrained(base, str(ckpt / "adapters" / role)).eval()
        with torch.no_grad(), trainer.parts.model.adapter(role):
            want = trainer.parts.model.policy(input_ids=ids).logits
            got = standalone(input_ids=ids).logits
        torch.testing.assert_close(got, want)
        base = standalone.unload()


def test_action_logprob_normalisations():
    from marft.algorithms import action_logprob

    tok = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    words = torch.tensor([2.0, 1.0])
    torch.testing.assert_close(action_logprob(tok, mask, words, "sum"), torch.tensor([-6.0, -4.0]))
    torch.testing.assert_close(action_logprob(tok, mask, words, "token_mean"), torch.tensor([-2.0, -4.0]))
    torch.testing.assert_close(action_logprob(tok, mask, words, "word_mean"), torch.tensor([-3.0, -4.0]))


def test_kl_early_stop(tmp_path):
    trainer = make_trainer(
        tmp_path, "algorithm.ppo_epochs=5", "algorithm.target_kl=1e-9", "algorithm.policy_lr=0.01"
    )
    result = one_iteration(trainer, 0)
    for role in ("speaker", "listener"):
        # the first minibatch starts at ratio 1 (KL 0) and steps; the next sees KL > target and
        # stops before stepping
        assert result.metrics[f"kl_early_stop/{role}"] == 1.0
        assert result.metrics[f"optimizer_steps/{role}"] == 1.0
    trainer = make_trainer(tmp_path / "b", "algorithm.ppo_epochs=3")
    metrics = one_iteration(trainer, 0).metrics
    assert metrics["optimizer_steps/listener"] == 3.0 * 2  # epochs x minibatches
    assert metrics["kl_early_stop/listener"] == 0.0


def test_top_k_top_p_training_stays_finite(tmp_path):
    for extra in ("sampling.top_k=5", "sampling.top_p=0.8"):
        trainer = make_trainer(tmp_path / extra, extra, "sampling.max_new_tokens=4", "algorithm.ppo_epochs=2")
        result = one_iteration(trainer, 0)
        assert all(torch.isfinite(torch.tensor(v)) for k, v in result.metrics.items() if "approx_kl" not in k)
        for role in ("speaker", "listener"):
            assert all(torch.isfinite(p).all() for p in trainer.parts.model.adapter_parameters(role))


def test_role_named_like_a_module_does_not_capture_other_adapters():
    from tests.conftest import make_team_model

    model = make_team_model(roles=["speaker", "model"])
    ids = {id(p) for p in model.adapter_parameters("model")}
    assert ids and not ids & {id(p) for p in model.adapter_parameters("speaker")}
    assert len(model.adapter_parameters("model")) == len(model.adapter_parameters("speaker"))
