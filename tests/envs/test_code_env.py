"""The code env and its tasks: data, prompts, rewards, multi-turn feedback, the tester, presets,
and every MBPP and HumanEval reference solution run in the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marft.compose import load_config, make_env
from marft.config import AgentConfig, ConfigError, TeamConfig
from marft.envs.code.env import assert_lines, load_tasks, shared_sandbox
from marft.envs.code.sandbox import Job, Status
from marft.envs.code.tasks import called_function, easy_tasks, task_from_row
from marft.team import TeamGraph
from tests.conftest import DATA

FAST = {"wall_seconds": 3.0, "cpu_seconds": 2}


def team(*roles: str, graded: str = "coder"):
    return TeamGraph.from_config(TeamConfig(agents=[AgentConfig(role=r, graded=r == graded) for r in roles]))


@pytest.fixture
def mbpp(tmp_path) -> Path:
    rows = [
        {
            "id": "t/1",
            "problem": "Write a function to add two numbers.",
            "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"],
            "setup": "",
            "solution": "def add(a, b):\n    return a + b",
        },
        {
            "id": "t/2",
            "problem": "Write a function to double a number.",
            "tests": ["assert double(2) == 4", "assert double(0) == 0"],
            "setup": "",
            "solution": "def double(x):\n    return 2 * x",
        },
    ]
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def env_for(path, roles=("coder",), **kwargs):
    kw = {"data": str(path), "sandbox": FAST, **kwargs}
    env = make_env("code", kw, team(*roles))
    env.reset_to(0)
    return env


def fenced(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}\n```\nIt adds the numbers."


def test_prompt_shows_none_one_or_all_visible_tests(mbpp):
    for shown, n in (("none", 0), ("one", 1), ("all", 3)):
        text = env_for(mbpp, visible_tests=shown).reset_to(0).text
        assert sum(f"assert add({a}" in text for a in ("1, 2", "0, 0", "-1, 1")) == n
        assert "Write a function to add two numbers." in text and "`add`" in text
        assert ("Your code should pass these tests" in text) == (n > 0)


def test_reward_is_the_fraction_of_tests_or_all_or_nothing(mbpp):
    half_right = "def add(a, b):\n    return a + b if a > 0 else 7"  # passes test 1 only
    r = env_for(mbpp).step({"coder": fenced(half_right)})
    assert r.rewards == pytest.approx(1 / 3) and r.correct is False and r.done
    assert r.info["tests_passed"] == 1 and r.info["status"] == "failed"
    r = env_for(mbpp, reward="all").step({"coder": fenced(half_right)})
    assert r.rewards == 0.0
    r = env_for(mbpp, reward="all").step({"coder": fenced("def add(a, b):\n    return a + b")})
    assert r.rewards == 1.0 and r.correct is True


def test_no_code_scores_zero_and_is_counted(mbpp):
    env = env_for(mbpp)
    r = env.step({"coder": "I would add them."})
    assert r.rewards == 0.0 and r.correct is False and r.info["status"] == "no_code"
    metrics = env.pop_metrics()
    assert metrics["sandbox_no_code"] == 1 and metrics["sandbox_runs"] == 0
    assert env.pop_metrics()["sandbox_no_code"] == 0  # counters reset when read


def test_multi_turn_feedback_names_the_failing_visible_test_and_is_bounded(mbpp):
    env = env_for(mbpp, max_attempts=3, visible_tests="one", feedback_chars=200)
    wrong = "def add(a, b):\n    return a - b"
    r = env.step({"coder": fenced(wrong)})
    assert not r.done and r.rewards == pytest.approx(1 / 3)
    text = r.observation.text
    assert "return a - b" in text  # the attempt is shown again
    assert "`assert add(1, 2) == 3` -> AssertionError; got -1" in text
    assert "1 hidden test(s) failed" in text and "add(-1, 1)" not in text.split("previous code")[1]
    feedback = text.split("```\n", 2)[-1]
    assert len(feedback) <= 200
    r = env.step({"coder": fenced("def add(a, b):\n    while True:\n        pass")})
    assert "timed out" in r.observation.text and not r.done
    r = env.step({"coder": fenced("def add(a, b):\n    return a + b")})
    assert r.done and r.correct and r.info["attempt"] == 3


def test_the_testers_asserts_run_after_the_tests_and_feed_back_only(mbpp):
    env = env_for(mbpp, roles=("tester", "coder"), max_attempts=2, tester_role="tester")
    tests = (
        "Tests:\nassert add(2, 2) == 4\nassert add(2, 2) == 5\nnot an assert\n```assert add(5, 5) == 10```"
    )
    assert assert_lines(tests, 5) == [
        "assert add(2, 2) == 4",
        "assert add(2, 2) == 5",
        "assert add(5, 5) == 10",
    ]
    r = env.step({"tester": tests, "coder": fenced("def add(a, b):\n    return a + b if a != 0 else 5")})
    assert r.rewards == pytest.approx(2 / 3)  # the tester's asserts never count
    text = r.observation.text
    assert "Tester's check `assert add(2, 2) == 4`: passed" in text
    assert "Tester's check `assert add(2, 2) == 5`: AssertionError; got 4" in text
    assert "Tester's check `assert add(5, 5) == 10`: passed" in text


def test_humaneval_prompt_is_prepended_and_asserts_split(tmp_path):
    row = {
        "id": "HumanEval/x",
        "prompt": 'import math\n\ndef root(x: float) -> float:\n    """Square root."""\n',
        "entry_point": "root",
        "test": "\n\ndef check(candidate):\n    assert candidate(4) == 2\n    assert candidate(9) == 3\n",
        "solution": "    return math.sqrt(x)\n",
    }
    task = task_from_row(row, "row 1")
    assert task.tests == ("assert candidate(4) == 2", "assert candidate(9) == 3") and task.visible == ()
    path = tmp_path / "he.jsonl"
    path.write_text(json.dumps(row) + "\n")
    env = env_for(path)
    assert "def root(x: float)" in env.reset_to(0).text
    # the answer uses math without importing it: the prompt's import is there
    r = env.step({"coder": fenced("def root(x):\n    return int(math.sqrt(x))")})
    assert r.correct and r.rewards == 1.0


def test_task_fields_and_errors():
    assert called_function(["assert sorted(f(1)) == [1]"]) == "f"
    assert called_function(["assert sum(1, 2) == 3"], "def sum(a, b):\n    return a") == "sum"
    hf = {
        "task_id": 11,
        "text": "Add.",
        "test_list": ["assert add(1, 1) == 2"],
        "test_setup_code": "",
        "code": "x",
    }
    task = task_from_row(hf, "row 1")
    assert (task.id, task.entry_point, task.problem) == ("mbpp/11", "add", "Add.")
    with pytest.raises(ConfigError, match="neither MBPP fields"):
        task_from_row({"question": "?"}, "row 3")


def test_config_is_validated_before_anything_runs(mbpp):
    with pytest.raises(ConfigError, match="not found"):
        make_env("code", {"data": "nope.jsonl"}, team("coder"))
    with pytest.raises(ConfigError, match="sandbox.wall_seconds"):
        make_env("code", {"data": str(mbpp), "sandbox": {"wall_seconds": 0}}, team("coder"))
    with pytest.raises(ConfigError, match="sandbox.isolation"):
        make_env("code", {"data": str(mbpp), "sandbox": {"isolation": "docker"}}, team("coder"))
    with pytest.raises(ConfigError, match="unknown key"):
        make_env("code", {"data": str(mbpp), "sandbox": {"walltime": 1}}, team("coder"))


def test_easy_tasks_are_seeded_and_their_solutions_pass():
    tasks = easy_tasks(60, seed=0) + easy_tasks(30, seed=0, split="test")
    assert tasks[:60] == easy_tasks(60, seed=0) and tasks[:60] != easy_tasks(60, seed=1)
    assert len({t.problem for t in tasks}) > 40 and all(t.visible == (0,) for t in tasks)
    train = {t.problem for t in easy_tasks(500, seed=0)}
    held_out = {t.problem for t in easy_tasks(500, seed=1, split="test")}
    shared = train & held_out  # only the templates without a constant
    assert len(held_out - train) > 50 and all(
        "{k}" not in p and not any(c.isdigit() for c in p) for p in shared
    )
    box = shared_sandbox(make_env("code", {"data": "easy", "easy_count": 1}, team("coder")).cfg.sandbox)
    results = box.map([Job(t.solution, t.tests) for t in tasks])
    assert all(r.status is Status.PASSED for r in results), [
        r.detail for r in results if r.status is not Status.PASSED
    ]
    for constant in ("None", "0", "False"):  # no constant passes every test
        wrong = box.map([Job(t.solution.split("return ")[0] + f"return {constant}", t.tests) for t in tasks])
        assert all(r.status is Status.FAILED for r in wrong), constant


def test_state_dict_restores_the_episode(mbpp):
    env = env_for(mbpp, max_attempts=2)
    env.reset(seed=3)
    env.step({"coder": fenced("def add(a, b):\n    return 0")})
    state = env.state_dict()
    other = env_for(mbpp, max_attempts=2)
    other.load_state_dict(state)
    assert other.reset(seed=None).text == env.reset(seed=None).text


@pytest.mark.parametrize("preset", ["code_single", "code_dual", "code_trio"])
def test_code_presets_validate_with_any_model(preset, mbpp):
    cfg = load_config(preset, [f"env.kwargs.data={mbpp}", "model.name=some/other-model"])
    graph = TeamGraph.from_config(cfg.team)
    assert [a.role for a in graph.agents if a.graded] == ["coder"]
    assert len(graph.agents) == {"code_single": 1, "code_dual": 2, "code_trio": 3}[preset]
    if preset == "code_trio":
        assert cfg.env.kwargs["tester_role"] == "tester" and cfg.env.kwargs["max_attempts"] == 2


WRONG = """
_marft_reference = {name}


def {name}(*args, **kwargs):  # the reference, with its answer changed
    r = _marft_reference(*args, **kwargs)
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "x"
    if isinstance(r, (list, tuple)):
        return type(r)(list(r) + [None])
    return ["wrong"]
"""


def test_every_reference_solution_passes_and_a_wrong_one_fails():
    """The fixture's 72 MBPP and HumanEval tasks (all 1,138: ``benchmarks/sandbox.py --data``),
    among them mbpp/367 and mbpp/927, whose tests use a class their setup defines (the env runs the
    setup after the program), and HumanEval tasks whose ``check`` holds more than asserts."""
    files = [DATA / "mbpp.jsonl", DATA / "humaneval.jsonl"]
    tasks = [t for f in files for t in load_tasks(str(f), None, (), False)]
    assert len(tasks) == 42 + 30
    assert {"mbpp/367", "mbpp/927", "HumanEval/32"} <= {t.id for t in tasks}
    box = shared_sandbox(make_env("code", {"data": "easy", "easy_count": 1}, team("coder")).cfg.sandbox)

    right = box.map([t.job(t.solution) for t in tasks])
    failed = [(t.id, r.detail) for t, r in zip(tasks, right, strict=True) if r.status is not Status.PASSED]
    assert failed == []
    wrong = box.map([t.job(t.solution + WRONG.format(name=t.entry_point)) for t in tasks])
    passed = [t.id for t, r in zip(tasks, wrong, strict=True) if r.status is Status.PASSED]
    assert passed == []


def test_hugging_face_loading_path_through_a_local_file(mbpp):
    """The hf: code path (datasets.load_dataset) on a local file, as the hub is unreachable here."""
    env = make_env("code", {"data": "hf:json", "data_files": [str(mbpp)], "split": "train"}, team("coder"))
    local = make_env("code", {"data": str(mbpp)}, team("coder"))
    assert env.problems == local.problems and env.problems[0].entry_point == "add"
