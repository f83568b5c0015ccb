"""Extracting the program from messy model answers: the last complete block that defines the name."""

import pytest

from marft.envs.code.extract import candidates, extract_code

ADD = "def add(a, b):\n    return a + b"


@pytest.mark.parametrize(
    "text",
    [
        f"```python\n{ADD}\n```",
        f"Here you go:\n```py\n{ADD}\n```\nThis adds two numbers.",
        f"```\n{ADD}\n```",
        f"[BEGIN]\n{ADD}\n[DONE]",
        f"Sure! The function is:\n\n{ADD}\n\nIt returns the sum.",
        ADD,
        f"```python\n{ADD}",  # the closing fence never came (token limit)
    ],
)
def test_the_usual_wrappings(text):
    assert extract_code(text, "add") == ADD


def test_the_last_complete_version_wins():
    draft = "def add(a, b):\n    return a - b"
    text = f"First try:\n```python\n{draft}\n```\nOops, fixed:\n```python\n{ADD}\n```"
    assert extract_code(text, "add") == ADD
    # a final version cut by the token limit does not parse: the earlier complete one wins
    cut = f"```python\n{ADD}\n```\nBetter:\n```python\ndef add(a, b):\n    return (a +"
    assert extract_code(cut, "add") == ADD


def test_blocks_that_do_not_define_the_name_are_not_chosen_but_helpers_come_along():
    text = (
        "```python\nimport math\n\ndef _sq(x):\n    return x * x\n```\n"
        "```python\ndef hyp(a, b):\n    return math.sqrt(_sq(a) + _sq(b))\n```\n"
        "Example:\n```python\nprint(hyp(3, 4))\n```"
    )
    code = extract_code(text, "hyp")
    assert code.startswith("import math") and "def hyp" in code and "print(" not in code
    ns = {}
    exec(code, ns)  # noqa: S102 - test-only, our own string
    assert ns["hyp"](3, 4) == 5.0
    assert extract_code(text, "missing") is None


def test_shell_and_output_fences_are_not_code():
    text = f"```bash\npip install numpy\n```\n```python\n{ADD}\n```\n```text\n3\n```"
    assert extract_code(text, "add") == ADD


def test_bare_code_in_prose_is_cut_to_what_parses():
    text = (
        "I will write it.\nimport os\ndef count(xs):\n    n = 0\n    for x in xs:\n        n += 1\n"
        "    return n\nThat is all. def is a keyword, by the way.\n"
    )
    code = extract_code(text, "count")
    assert code.startswith("import os\ndef count(xs):") and code.rstrip().endswith("return n")
    # a bare function cut mid-way keeps nothing broken
    assert extract_code("def f(x):\n    return (x +", "f") is None


def test_classes_and_assignments_define_names_and_any_code_without_a_name():
    assert "class Stack" in extract_code("```python\nclass Stack:\n    pass\n```", "Stack")
    assert extract_code("```python\nsquare = lambda x: x * x\n```", "square") == "square = lambda x: x * x"
    assert extract_code("no code at all", None) is None
    assert candidates("```python\nx = (\n```") == []  # nothing parses
