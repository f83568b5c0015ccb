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
