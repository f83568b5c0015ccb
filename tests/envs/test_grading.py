"""The math grader: labelled cases, extraction fallbacks and adversarial input."""

import threading

import pytest

from marft.envs.math import extract_answer, grade

RIGHT = [
    ("so the result is \\boxed{\\frac{1}{2}}.", "0.5"),
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}"),
    ("\\boxed{1/2}", "\\frac12"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{[1, 2)}", "[1,2)"),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]"),
    ("\\boxed{3, 5, 7}", "3, 5, 7"),
    ("\\boxed{11\\sqrt{2}}", "11\\sqrt2"),
    ("\\boxed{6 - 5i}", "6-5i"),
    ("\\boxed{90}", "90^\\circ"),
    ("\\boxed{5\\text{ cm}}", "5"),
    ("\\boxed{\\$18}", "18"),
    ("She makes $18 a day. The answer is $18.", "18"),
    ("The answer is 1,000 dollars.", "1000"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{50\\%}", "50"),
    ("\\boxed{x = 5}", "5"),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}"),
    ("Final answer: 42", "42"),
    ("Step 1 ... #### 72", "72"),
    ("First \\boxed{3}, but on reflection \\boxed{4}", "4"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}"),
    ("\\boxed{-2 + 7i}", "-2+7i"),
    ("The answer is 18 eggs.", "18"),
    ("\\boxed{90 degrees}", "90^\\circ"),
]
WRONG = [
    ("\\boxed{4.67}", "\\frac{14}{3}"),
    ("\\boxed{(1, 2]}", "[1,2)"),
    ("\\boxed{3}", "4"),
    ("First \\boxed{4}, but on reflection \\boxed{3}", "4"),
    ("\\boxed{2, 3}", "3, 5, 7"),
    ("The answer is 17.", "18"),
    ("no answer here", "18"),
    ("\\boxed{\\text{Bob}}", "\\text{Evelyn}"),
    # trailing words that change the value are not units
    ("\\boxed{2 pi}", "2"),
    ("\\boxed{5 x}", "5"),
    ("\\boxed{3 i}", "3"),
    ("\\boxed{2 e}", "2"),
    ("The answer is 7 million.", "7"),
    ("\\boxed{1 half}", "1"),
]


@pytest.mark.parametrize("response, reference", RIGHT)
def test_equivalent_answers(response, reference):
    assert grade(response, reference) is True


@pytest.mark.parametrize("response, reference", WRONG)
def test_different_answers(response, reference):
    assert grade(response, reference) is False


def test_extraction_fallbacks():
    assert extract_answer("blah \\boxed{\\frac{a}{b}} and \\boxed{x^{2}}") == "x^{2}"
    assert extract_answer("so the answer is 12.") == "12"
    assert extract_answer("We get 3 apples and then 5 more, so 8.") == "8"
    assert extract_answer("#### 1,234") == "1,234"
    assert extract_answer("") is None and extract_answer("no digits at all") is None


ADVERSARIAL = [
    "\\boxed{10^{10^{10^{10}}}}",
    "\\boxed{9" + "9" * 5000 + "}",
    "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",
    "\\boxed{" + "\\frac{" * 500 + "1" + "}{2}" * 500 + "}",
    "\\boxed{\\frac{1}{}",
    "\\boxed{\\left( 1, 2}",
    "\\boxed{}",
    "\\boxed{\\begin{pmatrix} 1 & 2",
    "\\boxed{\\sqrt[}",
    "}}}}{{{{\\boxed",
    "\\boxed{x^{x^{x^{x^{x^{x^{x}}}}}}!!!!}",
    "\\boxed{\\int_0^\\infty e^{-x^2} dx}",
    "\u0000\u202e\\boxed{\ud83d\ude00}",
    "a" * 200_000,
]


@pytest.mark.parametrize("response", ADVERSARIAL)
def test_adversarial_input_returns_false_and_terminates(response):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("ok", grade(response, "5")), daemon=True)
    thread.start()
    thread.join(timeout=60)  # a hang detector with a wide margin, not a speed test
    assert not thread.is_alive(), "grade() hung"
    assert result["ok"] is False


def test_bad_types_never_raise():
    assert grade(None, "1") is False  # type: ignore[arg-type]
    assert grade("\\boxed{1}", None) is False  # type: ignore[arg-type]
    assert grade(12, "12") is False  # type: ignore[arg-type]
    assert grade("\\boxed{1}", "") is False


def test_worker_recovers_after_a_timeout():
    assert grade("\\boxed{10^{10^{10^{10}}}}", "7", timeout=0.5) is False
    assert grade("\\boxed{\\frac{2}{4}}", "0.5") is True


# ----------------------------------------------------------------------------- the worker process

UNGUARDED = """
import sys
sys.path.insert(0, {src!r})
with open({log!r}, "a") as f:
    f.write("top-level code ran\\n")
from marft.envs.math.grading import grade, grader_counts
pairs = [("\\\\boxed{{5.0}}", "5"), ("\\\\boxed{{\\\\frac{{7}}{{2}}}}", "3.5"),
         ("\\\\boxed{{0.5}}", "\\\\frac{{1}}{{2}}"), ("\\\\boxed{{x = 5}}", "5"),
         ("\\\\boxed{{4.67}}", "\\\\frac{{14}}{{3}}"), ("\\\\boxed{{3}}", "4")]
print(*[grade(r, a) for r, a in pairs])
c = grader_counts()
print(c.calls, c.timeouts, c.failures)
"""


def test_an_unguarded_script_runs_once_and_gets_correct_verdicts(tmp_path):
    """The worker never imports the caller's __main__: a script without a main guard is not run a
    second time inside it, and symbolic comparisons get real verdicts."""
    import subprocess
    import sys
    from pathlib import Path

    import marft

    log = tmp_path / "ran.txt"
    script = tmp_path / "unguarded.py"
    src = str(Path(marft.__file__).resolve().parents[1])
    script.write_text(UNGUARDED.format(src=src, log=str(log)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    verdicts, counts = proc.stdout.strip().splitlines()
    assert verdicts.split() == ["True", "True", "True", "True", "False", "False"]
    assert counts.split() == ["6", "0", "0"]
    assert log.read_text().splitlines() == ["top-level code ran"]


def test_timeouts_and_worker_failures_are_counted_not_silent(monkeypatch):
    from marft.envs.math import grading
    from marft.envs.math.grading import Verdict, grader_counts, judge

    before = grader_counts()
    assert judge("\\boxed{10^{10^{10^{10}}}}", "7", timeout=0.3) is Verdict.TIMEOUT
    assert judge("\\boxed{\\frac{2}{4}}", "0.5") is Verdict.CORRECT  # a fresh worker took over
    assert judge("\\boxed{3}", "4") is Verdict.WRONG
    delta = grader_counts() - before
    assert (delta.calls, delta.timeouts, delta.failures) == (3, 1, 0)

    # A worker that cannot start (here: an interpreter that exits at once) is a failure, not "wrong".
    monkeypatch.setattr(grading, "_WORKER", grading._Worker())
    monkeypatch.setattr(grading.sys, "executable", "/bin/false")
    before = grader_counts()
    assert judge("\\boxed{7/2}", "3.6") is Verdict.FAILURE
    assert grade("\\boxed{7/2}", "3.6") is False
    delta = grader_counts() - before
    assert (delta.calls, delta.timeouts, delta.failures) == (2, 0, 2)
    with pytest.warns(RuntimeWarning, match="no verdict on"):
        monkeypatch.setattr(grading, "_warned", False)
        grading.warn_if_unreliable(0.0, min_calls=1)


def test_math_env_reports_grader_counters(tmp_path, monkeypatch):
    from marft.compose import make_env
    from marft.config import AgentConfig, TeamConfig
    from marft.envs.math import grading
    from marft.team import TeamGraph

    data = tmp_path / "p.jsonl"
    data.write_text('{"problem": "7/2?", "answer": "3.5"}\n')
    graph = TeamGraph.from_config(TeamConfig(agents=[AgentConfig(role="solver", graded=True)]))
    env = make_env("math", {"data": str(data)}, graph)
    env.reset_to(0)
    assert env.step({"solver": "\\boxed{\\frac{7}{2}}"}).rewards == 1.0
    assert env.pop_metrics() == {"grader_calls": 1.0, "grader_timeouts": 0.0, "grader_failures": 0.0}
    assert env.pop_metrics()["grader_calls"] == 0.0  # counters since the last call
    monkeypatch.setattr(grading, "_WORKER", grading._Worker())
    monkeypatch.setattr(grading.sys, "executable", "/bin/false")
    env.reset_to(0)
    assert env.step({"solver": "\\boxed{7/2}"}).rewards == 0.0
    assert env.pop_metrics()["grader_failures"] == 1.0
