"""Checkpoints that never lose work: exact resume, atomic saves, kills, signals, faults, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from marft.compose import resolve, tiny_corpus
from marft.envs.base import Observation, StepResult
from marft.reporting.metrics import read_metrics, reproducible
from marft.trainer import checkpoint as ckpt_mod
from marft.trainer.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_files,
    resolve_checkpoint,
    verify_checkpoint,
)
from marft.trainer.trainer import Trainer, TrainingStopped
from tests.conftest import cli_in_process, small_config

ROLES = ("speaker", "listener")


def run(cfg, out, resume=False):
    trainer = Trainer(cfg, out, resume=resume)
    trainer.setup()
    return trainer, trainer.train()


def adapters(ckpt: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {r: load_file(str(ckpt / "adapters" / r / "adapter_model.safetensors")) for r in ROLES}


def untimed(rows):
    return [reproducible(r) for r in rows]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "marft.cli", *args], capture_output=True, text=True, **kw)


def test_two_plus_two_iterations_equal_four_bit_for_bit(tmp_path):
    # dropout on, so resume must restore the torch RNG as well as the sampler's and the envs'
    extra = [
        "run.checkpoint_every=2",
        "lora.dropout=0.1",
        "algorithm.ppo_epochs=2",
        "algorithm.num_minibatches=2",
    ]
    _, whole = run(small_config("run.iterations=4", *extra), tmp_path / "whole")
    run(small_config("run.iterations=2", *extra), tmp_path / "split")
    _, rest = run(small_config("run.iterations=4", *extra), tmp_path / "split", resume=True)

    a, b = adapters(whole.checkpoint), adapters(rest.checkpoint)
    for role in ROLES:
        assert a[role].keys() == b[role].keys()
        for k in a[role]:
            assert torch.equal(a[role][k], b[role][k]), (role, k)
    va = torch.load(whole.checkpoint / "value_head.pt")
    vb = torch.load(rest.checkpoint / "value_head.pt")
    assert all(torch.equal(va[k], vb[k]) for k in va)
    rows_a, rows_b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert [r["iteration"] for r in rows_b] == [0, 1, 2, 3]
    assert untimed(rows_a) == untimed(rows_b)
    # a change did happen: otherwise "identical" proves nothing
    first = adapters(tmp_path / "split" / "checkpoints" / "iter-000002")
    assert any(not torch.equal(first["listener"][k], b["listener"][k]) for k in b["listener"])


def test_checkpoints_are_complete_and_only_the_last_k_are_kept(tmp_path):
    trainer, result = run(
        small_config("run.iterations=4", "run.checkpoint_every=1", "run.keep_checkpoints=2"), tmp_path
    )
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["iter-000003", "iter-000004"]
    manifest = verify_checkpoint(result.checkpoint)
    assert manifest["iteration"] == 4 and manifest["roles"] == list(ROLES)
    assert manifest["env_steps"] == result.rows[-1]["env_steps"]
    for name in (
        "optimizers.pt",
        "trainer_state.pt",
        "value_head.pt",
        "adapters/listener/adapter_model.safetensors",
    ):
        assert name in manifest["files"]
    optim, state, head = load_trainer_files(result.checkpoint)
    assert set(optim["policy"]) == set(ROLES) and optim["critic"] is not None and head is not None
    assert {"python", "numpy", "torch"} <= set(state["rng"]) and state["iteration"] == 4
    assert len(state["collector"]["envs"]) == 8
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_crash_in_the_middle_of_a_save_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    trainer, result = run(small_config("run.iterations=2"), tmp_path)
    good = result.checkpoint
    calls = {"n": 0}
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # adapters and value head written, optimizers not: the process "dies" here
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(3)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == good
    assert [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    trainer.save(3)  # the next save clears the leftover
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["iter-000002", "iter-000003"]


def test_a_damaged_checkpoint_is_never_chosen(tmp_path):
    run(small_config("run.iterations=2", "run.checkpoint_every=1", "run.keep_checkpoints=0"), tmp_path)
    newest = tmp_path / "checkpoints" / "iter-000002"
    weights = newest / "adapters" / "speaker" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged"):
        verify_checkpoint(newest)
    assert resolve_checkpoint(tmp_path).name == "iter-000001"


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from marft.trainer.trainer import Trainer
    from tests.conftest import small_config

    t = Trainer(small_config("run.iterations=1", "run.keep_checkpoints=2"), sys.argv[1])
    t.setup()
    t.train()
    print("saving", flush=True)
    i = 2
    while True:  # nothing but saves (and pruning): a kill lands inside one
        t.save(i)
        i += 1
    """
)


def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(KILL_SCRIPT)
    path = os.pathsep.join(p for p in (str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    for k, delay in enumerate((0.05, 0.37, 0.81)):
        out = tmp_path / f"run{k}"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = resolve_checkpoint(out)
        manifest = verify_checkpoint(ckpt)
        load_trainer_files(ckpt)
        for role in ROLES:
            load_file(str(ckpt / "adapters" / role / "adapter_model.safetensors"))
        # and the run resumes from it
        trainer = Trainer(small_config("run.iterations=1"), out, resume=True)
        trainer.setup()
        assert trainer.state.iteration == manifest["iteration"]


def test_resume_after_a_crash_has_no_gap_or_duplicate(tmp_path):
    _, full = run(
        small_config("run.iterations=4", "run.checkpoint_every=2", "run.keep_checkpoints=0"), tmp_path / "a"
    )
    # a run that died after logging iteration 3 but before its next checkpoint (the newest is at 2)
    run(small_config("run.iterations=4", "run.checkpoint_every=2", "run.keep_checkpoints=0"), tmp_path / "b")
    ckpt_mod._discard(tmp_path / "b" / "checkpoints" / "iter-000004")
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 4, "env_')  # a torn line from the kill
    _, resumed = run(small_config("run.iterations=4"), tmp_path / "b", resume=True)
    rows = read_metrics(tmp_path / "b")
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert untimed(rows) == untimed(read_metrics(tmp_path / "a"))
    assert [r["iteration"] for r in resumed.rows] == [0, 1, 2, 3]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_exits_clearly(tmp_path, sig):
    out = tmp_path / "run"
    args = ["train", "--set", "run.iterations=500", "--set", "env.n_envs=4", "--set", "run.progress=false"]
    args += ["--set", "run.loggers=[]", "--set", "run.checkpoint_every=0", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "marft.cli", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {sig.name}" in err and "marft train --resume" in err and "Traceback" not in err
    manifest = verify_checkpoint(resolve_checkpoint(out))
    assert manifest["iteration"] == len(read_metrics(out))
    resumed = cli("train", "--resume", str(out), "--set", f"run.iterations={manifest['iteration'] + 1}")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["iteration"] for r in read_metrics(out)] == list(range(manifest["iteration"] + 1))


def _poison(trainer, role):
    """Make ``role``'s policy loss NaN (the adapter in use is the one being updated)."""
    algo = trainer.parts.learner.policy
    loss_fn = algo.policy_loss

    def poisoned(*args, **kwargs):
        out = loss_fn(*args, **kwargs)
        if algo.model.policy.active_adapter == role:
            out.loss = out.loss * float("nan")
        return out

    algo.policy_loss = poisoned


def test_a_nonfinite_loss_skips_that_agent_and_aborts_after_n_in_a_row(tmp_path):
    cfg = small_config("run.iterations=1", "algorithm.critic_warmup_iters=0")
    trainer = Trainer(cfg, tmp_path / "one")
    trainer.setup()
    before = {r: [p.detach().clone() for p in trainer.parts.model.adapter_parameters(r)] for r in ROLES}
    _poison(trainer, "speaker")
    result = trainer.train()
    row = result.rows[-1]
    assert row["nonfinite_skip/speaker"] == 1.0 and row["nonfinite_skip/listener"] == 0.0
    after = {r: trainer.parts.model.adapter_parameters(r) for r in ROLES}
    assert all(torch.equal(b, a) for b, a in zip(before["speaker"], after["speaker"], strict=True))
    assert any(not torch.equal(b, a) for b, a in zip(before["listener"], after["listener"], strict=True))
    assert all(torch.isfinite(p).all() for p in after["speaker"])

    cfg = small_config("run.iterations=10", "run.max_nonfinite_in_row=3", "algorithm.critic_warmup_iters=0")
    trainer = Trainer(cfg, tmp_path / "many")
    trainer.setup()
    _poison(trainer, "speaker")
    with pytest.raises(
        TrainingStopped, match="speaker's loss or gradient was not finite in 3 iterations"
    ) as e:
        trainer.train()
    assert e.value.exit_code == 1
    assert (
        len(read_metrics(tmp_path / "many")) == 3 and verify_checkpoint(e.value.checkpoint)["iteration"] == 3
    )


class FlakyEnv:
    """Says the secret is "red"; raises in step() for the env copies told to."""

    fail_every = 4
    count = 0

    def __init__(self, **kwargs):
        FlakyEnv.count += 1
        self.broken = FlakyEnv.count % FlakyEnv.fail_every == 0

    def reset(self, seed=None):
        return Observation(text="name the secret colour")

    def step(self, actions):
        if self.broken:
            raise ZeroDivisionError("reward function bug")
        return StepResult(observation=self.reset(), rewards=float("red" in actions["listener"]), done=True)


def test_env_exceptions_fail_the_episode_not_the_run(tmp_path, caplog):
    FlakyEnv.count, FlakyEnv.fail_every = 0, 4  # 2 of 8 copies fail: 25%
    env = ["env.name=tests.trainer.test_checkpoint:FlakyEnv", "env.kwargs={}"]
    cfg = small_config("run.iterations=2", "env.max_failure_rate=0.3", *env)
    _, result = run(cfg, tmp_path / "ok")
    assert [r["episodes_failed"] for r in result.rows] == [2, 2]
    assert [r["episodes"] for r in result.rows] == [6, 6]
    assert "reward function bug" in caplog.text

    FlakyEnv.count = 0
    cfg = small_config("run.iterations=2", "env.max_failure_rate=0.2", *env)
    with pytest.raises(TrainingStopped, match="2 of 8 episodes failed"):
        run(cfg, tmp_path / "too-many")


def test_bad_run_folders_fail_clearly(tmp_path, capsys):
    proc = cli_in_process(capsys, "train", "--resume", str(tmp_path))
    assert (
        proc.returncode == 2 and "not a marft run directory" in proc.stderr and "Traceback" not in proc.stderr
    )
    (tmp_path / "config.yaml").write_text(
        (Path(__file__).parents[2] / "src/marft/presets/demo.yaml").read_text()
    )
    proc = cli_in_process(capsys, "train", "--resume", str(tmp_path))
    assert proc.returncode == 2 and "no complete checkpoint" in proc.stderr
    proc = cli_in_process(capsys, "train", "--resume", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "no config.yaml" in proc.stderr
    run(small_config(), tmp_path / "done")
    proc = cli_in_process(capsys, "train", "--out", str(tmp_path / "done"))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "--resume" in proc.stderr
    proc = cli_in_process(
        capsys, "train", "--set", "env.name=math", "--set", "env.kwargs={data: /nowhere/x.jsonl}"
    )
    assert proc.returncode == 2 and "/nowhere/x.jsonl" in proc.stderr and "not found" in proc.stderr
    proc = cli_in_process(
        capsys, "export", str(tmp_path / "done"), "--agent", "nobody", "--out", str(tmp_path / "x")
    )
    assert proc.returncode == 2 and "agents: listener, speaker" in proc.stderr


def test_export_adapter_and_merged_model(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from marft.models import load_base

    cfg = small_config("run.iterations=2")
    trainer, result = run(cfg, tmp_path / "run")
    proc = cli("export", str(tmp_path / "run"), "--agent", "listener", "--out", str(tmp_path / "adapter"))
    assert proc.returncode == 0, proc.stderr
    proc = cli(
        "export", str(tmp_path / "run"), "--agent", "listener", "--out", str(tmp_path / "merged"), "--merge"
    )
    assert proc.returncode == 0, proc.stderr

    ids = trainer.parts.model.tokenizer(["name the secret colour red"], return_tensors="pt").input_ids
    with torch.no_grad(), trainer.parts.model.adapter("listener"):
        want = trainer.parts.model.policy(input_ids=ids.to(trainer.parts.model.device)).logits.cpu()
    base, _ = load_base(
        cfg.model, corpus=tiny_corpus(resolve(cfg), trainer.parts.sampler.envs[0])
    )  # rebuilt from its seed
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"]
