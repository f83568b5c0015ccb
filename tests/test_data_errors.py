"""Every data problem is one clear message and exit 2, from ``marft train`` and ``marft eval``,
before a model loads: a missing file, a line that is not JSON, a row without the configured fields,
and a Hugging Face dataset that cannot be reached."""

import os
import subprocess
import sys

import pytest

from marft import cli

TINY_MATH = [
    "--set",
    "model.name=tiny",
    "--set",
    "run.progress=false",
    "--set",
    "run.loggers=[]",
]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model starts loading: data errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data error was reported")

    monkeypatch.setattr("marft.compose.build.load_base", refuse)


def bad_files(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": \n')
    no_field = tmp_path / "fields.jsonl"
    no_field.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"question": "2+2?", "answer": "4"}\n')
    return {
        str(tmp_path / "missing.jsonl"): ["not found"],
        str(bad_json): ["bad.jsonl line 2 is not valid JSON"],
        str(no_field): ["fields.jsonl line 3 has no field 'problem'", "'question'", "problem_key"],
    }


@pytest.mark.parametrize("command", ["train", "eval"])
def test_bad_local_data_is_one_message_and_exit_2(tmp_path, capsys, no_model, command):
    for path, expected in bad_files(tmp_path).items():
        args = [command, "math_single", "--set", f"env.kwargs.data={path}", *TINY_MATH]
        args += ["--out", str(tmp_path / f"out-{command}")]
        assert cli.main(args) == 2, path
        err = capsys.readouterr().err
        assert err.startswith("marft: error: config: env.kwargs.data:"), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        for text in expected:
            assert text in err, (text, err)
    assert not (tmp_path / "out-train" / "config.yaml").exists()  # nothing written for a failed start


def offline_env(tmp_path, how: str) -> dict[str, str]:
    """Nothing cached, and either ``HF_HUB_OFFLINE=1`` or no network: the hub's endpoint on a closed
    loopback port (what a machine without network sees, without sending anything out)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and k != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(tmp_path / "hf")
    if how == "offline mode":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    return env


@pytest.mark.parametrize(
    ("command", "preset", "how"),
    [("train", "math_dual", "no network"), ("eval", "math_single", "offline mode")],
)
def test_unreachable_hub_names_the_dataset_and_the_local_alternative(tmp_path, command, preset, how):
    proc = subprocess.run(
        [sys.executable, "-m", "marft.cli", command, preset, *TINY_MATH, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=offline_env(tmp_path, how),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("marft: error: config: env.kwargs.data: cannot load dataset openai/gsm8k")
    reason = "HF_HUB_OFFLINE is set" if how == "offline mode" else "no connection to http://127.0.0.1:9"
    assert f"the Hugging Face Hub could not be reached ({reason})" in err
    assert "--set env.kwargs.data=PATH" in err and "local JSONL" in err
    assert not (tmp_path / "o").exists()  # nothing written, no model loaded
