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
    "--set",
    "env.kwargs.problem_key=problem",
    "--set",
    "env.kwargs.answer_after=null",
]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model starts loading: data errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data error was reported")

    monkeypatch.setattr("marft.compose.load_base", refuse)


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


@pytest.mark.parametrize("command", ["train", "eval"])
def test_unreachable_hub_names_the_dataset_and_the_offline_alternative(tmp_path, command):
    pytest.importorskip("datasets")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "marft.cli", command, "math_single", *TINY_MATH, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "cannot load Hugging Face dataset 'hf:openai/gsm8k:main'" in err
    assert "--set env.kwargs.data=" in err and "local JSONL" in err
