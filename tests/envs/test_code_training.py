"""Coding teams end to end on the tiny model: training with the code env, attacks contained while
training goes on, ``marft eval`` pass@k on code, and env copies stepped on threads."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from marft.compose import capabilities_of, load_config
from marft.envs.base import Observation, StepResult
from marft.envs.code.env import CodeEnv
from marft.envs.code.isolation import probe
from marft.envs.copies import step_all
from marft.eval.evaluate import evaluate
from marft.trainer import train
from tests.conftest import DATA, write_tiny_config

ROOT = Path(__file__).resolve().parents[2]
MBPP = DATA / "mbpp.jsonl"
SECRET = "MARFT_TEST_SECRET_VALUE_42"


def code_config(tmp_path: Path, env_name: str = "code", iterations: int = 2, **kwargs) -> Path:
    return write_tiny_config(
        tmp_path / "code.yaml",
        [
            {"role": "planner", "system_prompt": "describe the approach"},
            {"role": "coder", "system_prompt": "write the function", "observes": ["planner"], "graded": True},
        ],
        {
            "name": env_name,
            "n_envs": 8,
            "horizon": 2,
            "kwargs": {
                "data": str(MBPP),
                "limit": 12,
                "max_attempts": 2,
                "sandbox": {"wall_seconds": 3.0, "cpu_seconds": 2, "memory_mb": 512, "output_bytes": 100_000},
                **kwargs,
            },
        },
        run={"iterations": iterations, "report": False},
        sampling={"max_new_tokens": 8},
        algorithm={"name": "grpo", "group_size": 4, "ppo_epochs": 1},
    )


class WrapEnv(CodeEnv):
    """The code env, with the coder's text put in the wanted function's body (``return TEXT``), so
    that every attempt of a model too small to write Python still runs in the sandbox."""

    def step(self, actions):
        name = self.task.entry_point
        text = actions["coder"]
        return super().step({**actions, "coder": f"```python\ndef {name}(*args):\n    return {text!r}\n```"})


def preset_overrides(preset: str) -> list[str]:
    """A code preset on the tiny model, MBPP from the test fixture, short outputs, one iteration."""
    n_agents = {"code_single": 1, "code_dual": 2, "code_trio": 3}[preset]
    return [
        "model.name=tiny",
        "model.tiny.initializer_range=0.2",
        "lora.r=4",
        "lora.target_modules=[q_proj,v_proj]",
        "run.iterations=1",
        "run.progress=false",
        "run.loggers=[]",
        "run.report=false",
        f"env.name={__name__}:WrapEnv",
        f"env.kwargs.data={MBPP}",
        "env.kwargs.limit=12",
        "env.kwargs.sandbox.wall_seconds=3.0",
        "sampling.max_new_tokens=8",
        *[f"team.agents.{i}.max_new_tokens=8" for i in range(n_agents)],
    ]


@pytest.mark.parametrize("preset", ["code_single", "code_dual", "code_trio"])
def test_code_presets_train_and_marft_eval_gives_pass_at_k(preset, tmp_path):
    cfg = load_config(preset, preset_overrides(preset))
    result = train(cfg, tmp_path / "run")
    (row,) = result.rows
    attempts = 2 if preset == "code_trio" else 1
    # every attempt ran (or had no parsable code: a ``` in the text ends the fence), none solved
    assert row["sandbox_runs"] + row["sandbox_no_code"] == cfg.env.n_envs * attempts
    assert row["sandbox_runs"] > 0 and row["sandbox_failed"] == row["sandbox_runs"]
    assert row["episode_return"] == 0.0
    summary = evaluate(
        cfg, tmp_path / "eval", checkpoint=tmp_path / "run", samples=2, limit=3, progress=False
    )
    # programs are judged, not voted on: no maj@2
    assert set(summary["team"]) == {"accuracy", "pass@1", "pass@2", "generated_tokens"}
    assert summary["team"]["pass@1"] == 0.0
    lines = [json.loads(x) for x in (tmp_path / "eval" / "transcripts.jsonl").read_text().splitlines()]
    assert len([x for x in lines if x["swap_to_base"] is None]) == 3 * 2


ATTACKS = [
    "while True:\n    pass",  # infinite loop
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",  # fork bomb
    "xs = []\nwhile True:\n    xs.append(bytearray(10**7))",  # memory bomb
    "while True:\n    print('x' * 100_000)",  # a gigabyte of output
    "import shutil\nshutil.rmtree({checkout!r})",  # delete the checkout
    "import os, signal\nos.kill({parent}, signal.SIGKILL)",  # kill the trainer
    "import ctypes\nctypes.string_at(0)",  # segfault
    "import os\nprint(os.environ.get({secret!r}))\nos._exit(0)",  # read a secret, exit oddly
]


class AttackEnv(CodeEnv):
    """The code env, but copy b's coder "writes" attack b (whatever the model said)."""

    copies = 0

    def __init__(self, config) -> None:
        super().__init__(config)
        self.copy = AttackEnv.copies
        AttackEnv.copies += 1

    def step(self, actions):
        attack = ATTACKS[self.copy % len(ATTACKS)].format(
            checkout=str(ROOT), parent=os.getpid(), secret=SECRET
        )
        name = self.task.entry_point
        return super().step(
            {**actions, "coder": f"```python\ndef {name}(*args):\n    return 0\n{attack}\n```"}
        )


def test_attacks_are_contained_while_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET, "hunter2")
    AttackEnv.copies = 0
    cfg = load_config(str(code_config(tmp_path, f"{__name__}:AttackEnv", iterations=1)))
    result = train(cfg, tmp_path / "run")
    assert len(result.rows) == 1 and (tmp_path / "run").is_dir()
    row = result.rows[0]
    assert row["sandbox_runs"] == 8 * 2  # 8 copies, two attempts each (none solves its task)
    contained = row["sandbox_timeout"] + row["sandbox_oom"] + row["sandbox_killed"]
    if probe().isolation == "none":
        # Without a user namespace the process limit is the sandbox user's, shared: while the fork
        # bomb runs, a neighbour may be unable to start its program (killed, not timed out).
        assert contained >= 2 * 2 + 2 + 2 * 2
    else:
        assert row["sandbox_timeout"] >= 2 * 2 and row["sandbox_oom"] >= 2 and row["sandbox_killed"] >= 2 * 2
    assert (ROOT / "pyproject.toml").is_file() and (ROOT / "src" / "marft" / "envs").is_dir()
    transcripts = "\n".join(p.read_text() for p in (tmp_path / "run").rglob("*.jsonl"))
    assert "hunter2" not in transcripts


class Slow:
    """An env whose step records its thread (and raises for one copy)."""

    concurrent_steps = True

    def __init__(self, i: int, barrier: threading.Barrier | None) -> None:
        self.i, self.barrier, self.thread = i, barrier, None

    def step(self, actions):
        self.thread = threading.get_ident()
        if self.barrier is not None:
            self.barrier.wait(timeout=10)  # returns only if all copies step at once
        if self.i == 2:
            raise ValueError("copy 2 fails")
        return StepResult(Observation("x"), float(self.i), True)


class Serial(Slow):
    """The same env, but its class does not let copies step at once."""

    concurrent_steps = False


def test_step_all_steps_concurrent_copies_on_threads_in_order():
    envs = [Slow(i, threading.Barrier(4)) for i in range(4)]
    barrier = envs[0].barrier
    for env in envs:
        env.barrier = barrier
    caps = capabilities_of(Slow)
    assert caps.concurrent
    out = step_all(envs, [{}] * 4, caps)
    assert [r.rewards for r in out if isinstance(r, StepResult)] == [0.0, 1.0, 3.0]
    assert isinstance(out[2], ValueError)
    assert len({env.thread for env in envs}) == 4
    serial = [Serial(i, None) for i in range(3)]  # a class that may not: all step in the caller's thread
    step_all(serial, [{}] * 3, capabilities_of(Serial))
    assert {env.thread for env in serial} == {threading.get_ident()}
