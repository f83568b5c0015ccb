"""The plain-data codec between the program's process and the checker, the frames, the checker's
plan of a job's tests, and the one program the sandbox runs."""

from __future__ import annotations

import ast
import collections
import os
from pathlib import Path

import pytest

from marft.envs.code.checks import check_plan
from marft.envs.code.inside import SOURCE
from marft.envs.code.inside.wire import MAX_DEPTH, NotPlainData, WireError, decode, encode, receive, send


def no_handles(value):
    raise NotPlainData(type(value).__name__)


def no_remotes(number, name):
    raise AssertionError("no handle expected")


def test_plain_values_encode_by_hand_and_come_back_equal_and_of_the_same_type():
    cases = [
        (None, None),
        (True, True),
        (3, 3),
        (2.5, 2.5),
        ("x", "x"),
        ([1, (2, "a")], ["L", 1, ["T", 2, "a"]]),
        ({1: [2]}, ["D", 1, ["L", 2]]),
        ({3}, ["S", 3]),
        (frozenset({4}), ["F", 4]),
        (b"\x00\xff", ["B", "\x00\xff"]),
        (1 + 2j, ["C", 1.0, 2.0]),
        (int, ["Y", "int"]),
        (collections.Counter("aab"), ["K", "Counter", None, ["D", "a", 2, "b", 1]]),
        (collections.defaultdict(list, {1: []}), ["K", "defaultdict", "list", ["D", 1, ["L"]]]),
        (collections.deque([1]), ["K", "deque", None, ["L", 1]]),
    ]
    for value, node in cases:
        assert encode(value, no_handles) == node
        back = decode(node, no_remotes)
        assert back == value and type(back) is type(value)
    assert decode(encode(collections.defaultdict(list), no_handles), no_remotes)["new"] == []
    nan = decode(encode(float("nan"), no_handles), no_remotes)
    assert nan != nan  # NaN stays NaN: a test comparing it fails as it would have


def test_anything_not_exactly_plain_is_a_handle():
    class Int(int):
        def __eq__(self, other):
            return True

    class Anything:
        pass

    made: list = []

    def handle(value):
        made.append(value)
        return ["H", len(made) - 1, type(value).__name__]

    assert encode([Int(3), Anything(), len, collections.defaultdict(Anything)], handle) == [
        "L",
        ["H", 0, "Int"],
        ["H", 1, "Anything"],
        ["H", 2, "builtin_function_or_method"],
        ["H", 3, "defaultdict"],  # a factory that is not a builtin type
    ]
    nested: list = []
    nested.append(nested)
    with pytest.raises(NotPlainData, match=str(MAX_DEPTH)):
        encode(nested, handle)


@pytest.mark.parametrize(
    "node",
    [
        {"a": 1},
        [],
        [1, 2],
        ["Q", 1],
        ["D", 1],
        ["S", ["L"]],
        ["D", ["L"], 1],
        ["B", "\u0100"],
        ["C", "1", 2],
        ["Y", "print"],
        ["Y", "Nope"],
        ["H", "1", "x"],
        ["K", "Counter", None, ["L"]],
        ["K", "defaultdict", "print", ["D"]],
        ["K", "OrderedDict"],
    ],
)
def test_malformed_nodes_are_wire_errors(node):
    with pytest.raises(WireError):
        decode(node, no_remotes)


def test_frames_round_trip_and_a_frame_over_the_limit_is_refused():
    r, w = os.pipe()
    send(w, ["ok", ["L", 1, "é"]])
    assert receive(r, 100) == ["ok", ["L", 1, "é"]]
    send(w, ["ok", "x" * 200])
    with pytest.raises(WireError, match="the limit is 100"):
        receive(r, 100)  # the channel is then out of step: the checker ends the program's process
    os.write(w, b"\x00\x00")
    os.close(w)
    r2, w2 = os.pipe()
    os.write(w2, b"\x00\x00\x00\x01")
    os.close(w2)
    assert receive(r2, 100) is None  # end of file, mid-frame included
    os.close(r)
    os.close(r2)


def test_the_check_plan_by_hand():
    plan = check_plan(
        ("assert math.isclose(area(2), 12.56)", "assert sum([1]) == 1", "xs = [f(x) for x in range(2)]"),
        "import re\ndef helper(y):\n    return y",
        "sum",
    )
    # builtins out (range), but the entry point (sum); over-inclusive (x, y) is harmless
    assert set(plan.names) == {"math", "area", "sum", "xs", "f", "x", "y"}
    assert set(plan.imports) == {"math", "re"}
    assert plan.got == (None, "sum([1])", None)
    humaneval = check_plan(("assert candidate(1) == 2",), "", "f")
    assert "f" in humaneval.names and "candidate" in humaneval.names


def test_the_sandbox_program_is_one_module_without_clashing_names():
    """The four modules are joined into one: a top-level name defined twice would replace the other."""
    compile(SOURCE, "marft-sandbox", "exec")
    inside = Path(__file__).resolve().parents[2] / "src/marft/envs/code/inside"
    seen: dict[str, str] = {}
    for name in ("wire.py", "solution.py", "checker.py", "launch.py"):
        for node in ast.parse((inside / name).read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined = [node.name]
            elif isinstance(node, ast.Assign):
                defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
            else:
                continue
            for d in defined:
                assert d not in seen, f"{d} is defined in {seen.get(d)} and {name}"
                seen[d] = name
    assert "from marft" not in SOURCE and SOURCE.count("from __future__") == 1
