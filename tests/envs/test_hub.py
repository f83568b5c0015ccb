"""Public datasets by name: each catalogued dataset's rows become marft rows (hand-written rows in
each dataset's own format), the default data of the envs, splits, and the one-line error offline."""

from __future__ import annotations

import json

import pytest

from marft.compose import make_env
from marft.config import AgentConfig, ConfigError, TeamConfig
from marft.envs.code.env import load_tasks
from marft.envs.hub import CATALOGUE, HubSpec, gsm8k_row, humaneval_row, load_hub_rows, math_row, mbpp_row
from marft.envs.math.env import load_problems
from marft.team import TeamGraph
from tests.conftest import DATA

GSM8K_ROW = {
    "question": "A shop sells 1,000 pens a day for 2 dollars each. How much does it make?",
    "answer": "It makes 1,000 * 2 = <<1000*2=2000>>2000 dollars.\n#### 2,000",
}
MATH_ROW = {
    "problem": "What is $\\frac{1}{2} + \\frac{1}{2}$?",
    "level": "Level 1",
    "type": "Algebra",
    "solution": "First $\\boxed{x}$ is not it. We get $\\boxed{\\frac{2}{2}} = 1$, so $\\boxed{1}$.",
}
MBPP_FULL_ROW = {
    "task_id": 11,
    "text": "Write a python function to add two numbers.",
    "code": "def add(a, b):\n    return a + b",
    "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
    "test_setup_code": "import math",
    "challenge_test_list": ["assert add(-1, 1) == 0"],
}
MBPP_SANITIZED_ROW = {
    "source_file": "Benchmark Questions Verification V2.ipynb",
    "task_id": 11,
    "prompt": "Write a python function to add two numbers.",
    "code": "def add(a, b):\n    return a + b",
    "test_imports": ["import math", "import re"],
    "test_list": ["assert add(1, 2) == 3"],
}
HUMANEVAL_ROW = {
    "task_id": "HumanEval/0",
    "prompt": 'def add(a, b):\n    """Add a and b."""\n',
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    "entry_point": "add",
}


def team(*roles: str, graded: str):
    return TeamGraph.from_config(TeamConfig(agents=[AgentConfig(role=r, graded=r == graded) for r in roles]))


def test_each_datasets_rows_become_marft_rows():
    assert gsm8k_row(GSM8K_ROW) == {
        "problem": GSM8K_ROW["question"],
        "answer": "2000",
        "solution": GSM8K_ROW["answer"],
    }
    got = math_row(MATH_ROW)
    assert got["answer"] == "1" and got["problem"] == MATH_ROW["problem"] and got["subject"] == "Algebra"
    nested = math_row({**MATH_ROW, "solution": "so $\\boxed{\\frac{\\sqrt{3}}{2}}$."})
    assert nested["answer"] == "\\frac{\\sqrt{3}}{2}"
    assert math_row({**MATH_ROW, "answer": "7"})["answer"] == "7"  # MATH-500 states its answer
    with pytest.raises(ValueError, match="boxed"):
        math_row({**MATH_ROW, "solution": "no answer here"})
    assert mbpp_row(MBPP_FULL_ROW) == {
        "id": "mbpp/11",
        "problem": "Write a python function to add two numbers.",
        "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
        "setup": "import math",
        "challenge_tests": ["assert add(-1, 1) == 0"],
        "solution": "def add(a, b):\n    return a + b",
    }
    sanitized = mbpp_row(MBPP_SANITIZED_ROW)
    assert (
        sanitized["problem"] == MBPP_SANITIZED_ROW["prompt"]
        and sanitized["setup"] == "import math\nimport re"
    )
    assert sanitized["challenge_tests"] == [] and sanitized["tests"] == ["assert add(1, 2) == 3"]
    assert humaneval_row(HUMANEVAL_ROW)["solution"] == "    return a + b\n"


def test_the_local_fixtures_are_these_conversions_of_the_public_rows():
    """The fixture rows equal what the catalogue makes of the same rows in the hub's format."""
    gsm = json.loads((DATA / "gsm8k_test.jsonl").read_text().splitlines()[0])
    hub = {"question": gsm["problem"], "answer": gsm["solution"]}
    assert {k: v for k, v in gsm.items() if k != "id"} == gsm8k_row(hub)
    mbpp = json.loads((DATA / "mbpp.jsonl").read_text().splitlines()[0])
    raw = {
        "task_id": int(mbpp["id"].split("/")[1]),
        "text": mbpp["problem"],
        "code": mbpp["solution"],
        "test_list": mbpp["tests"],
        "test_setup_code": mbpp["setup"],
        "challenge_test_list": mbpp["challenge_tests"],
    }
    assert mbpp_row(raw) == mbpp


def test_specs_name_their_dataset_config_and_default_split():
    gsm = HubSpec.parse("hf:openai/gsm8k:main")
    assert (gsm.name, gsm.config, gsm.known.licence, gsm.split(None)) == (
        "openai/gsm8k",
        "main",
        "MIT",
        "train",
    )
    assert HubSpec.parse("hf:openai/openai_humaneval").split(None) == "test"
    assert HubSpec.parse("hf:openai/openai_humaneval").config == "openai_humaneval"
    assert HubSpec.parse("hf:google-research-datasets/mbpp:sanitized").known.convert is mbpp_row
    assert HubSpec.parse("hf:someone/else:cfg").known is None
    assert HubSpec.parse("hf:someone/else").split(None) == "train"
    with pytest.raises(ConfigError, match="has the splits test, not 'train'"):
        HubSpec.parse("hf:openai/openai_humaneval").split("train")
    assert {d.path for d in CATALOGUE} >= {
        "openai/gsm8k",
        "DigitalLearningGmbH/MATH-lighteval",
        "google-research-datasets/mbpp",
        "openai/openai_humaneval",
    }


@pytest.fixture
def hub(monkeypatch):
    """``datasets.load_dataset`` answering from hand-written rows in each dataset's own format,
    recording what it was asked."""
    import datasets

    rows = {
        "openai/gsm8k": [GSM8K_ROW],
        "DigitalLearningGmbH/MATH-lighteval": [MATH_ROW],
        "google-research-datasets/mbpp": [MBPP_FULL_ROW],
        "openai/openai_humaneval": [HUMANEVAL_ROW],
    }
    asked = []

    def load_dataset(name, config=None, split=None, **kw):
        asked.append((name, config, split))
        return rows[name]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("marft.envs.hub.hub_reachable", lambda timeout=3.0: True)
    yield asked
    load_problems.cache_clear()  # what this fixture served is no dataset
    load_tasks.cache_clear()


def test_the_envs_default_to_the_public_datasets(hub):
    math = make_env("math", {}, team("actor", graded="actor"))
    assert math.problems == ((GSM8K_ROW["question"], "2000"),)
    code = make_env("code", {}, team("coder", graded="coder"))
    assert code.problems[0].id == "mbpp/11" and code.problems[0].entry_point == "add"
    assert code.problems[0].setup == "import math"
    lighteval = make_env(
        "math",
        {"data": "hf:DigitalLearningGmbH/MATH-lighteval", "split": "test"},
        team("solver", graded="solver"),
    )
    assert lighteval.problems == ((MATH_ROW["problem"], "1"),)
    humaneval = make_env("code", {"data": "hf:openai/openai_humaneval"}, team("coder", graded="coder"))
    assert (
        humaneval.problems[0].entry_point == "add" and humaneval.problems[0].solution == "    return a + b\n"
    )
    assert hub == [
        ("openai/gsm8k", "main", "train"),
        ("google-research-datasets/mbpp", "full", "train"),
        ("DigitalLearningGmbH/MATH-lighteval", "default", "test"),
        ("openai/openai_humaneval", "openai_humaneval", "test"),
    ]


def test_offline_code_data_and_a_forced_offline_mode_say_the_same(tmp_path, monkeypatch):
    import datasets.config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError) as e:
        make_env("code", {"data": "hf:openai/openai_humaneval"}, team("coder", graded="coder"))
    assert "openai/openai_humaneval (config openai_humaneval, split test)" in str(e.value)
    assert "HF_HUB_OFFLINE is set" in str(e.value) and "MBPP or HumanEval row" in str(e.value)
    assert "\n" not in str(e.value)


def test_an_unreachable_hub_asks_datasets_in_offline_mode_so_a_cache_answers_at_once(monkeypatch):
    """Without a connection, ``datasets`` is asked in offline mode (its cache, no retries); the
    flags are restored after."""
    import datasets
    import datasets.config
    from huggingface_hub import constants

    seen = []

    def load_dataset(name, config=None, split=None, **kw):
        seen.append((datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE))
        return [GSM8K_ROW]

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("marft.envs.hub.hub_reachable", lambda timeout=3.0: False)
    rows = load_hub_rows("hf:openai/gsm8k:main", None, (), "rows")
    assert rows == [(1, gsm8k_row(GSM8K_ROW))] and seen == [(True, True)]
    assert not datasets.config.HF_HUB_OFFLINE and not constants.HF_HUB_OFFLINE
    monkeypatch.setattr("marft.envs.hub.hub_reachable", lambda timeout=3.0: True)
    load_hub_rows("hf:openai/gsm8k:main", None, (), "rows")
    assert seen[-1] == (False, False)  # reachable: datasets may look for a newer version
