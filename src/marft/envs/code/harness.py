"""The program that runs inside the sandbox: ``python -I -c <this file's source>``.

It reads one job from its standard input (JSON: the program, the setup, the tests, the resource
limits, the number of the result pipe and a tag), lowers its own resource limits (they then hold
for everything the untrusted code starts), runs the program, then each test in the program's
namespace, and writes one JSON line per event to the result pipe:

* ``[tag, "start"]`` once the limits hold,
* ``[tag, "load", message]`` when the program (or the setup) itself raised,
* ``[tag, "test", i, message]`` after test ``i`` (message empty when it passed),
* ``[tag, "done"]`` after the last test.

Results stream, so the tests that passed before a program hung or exited still count. The code
under test runs in this process and could write to the pipe; the tag (a random token per run)
makes a forged line take work, not a ``print``. This is a reward-hacking speed bump, not a proof:
the sandbox contains programs, it does not make their reports unforgeable.

This file imports nothing from marft: it is sent as source and runs under the interpreter alone.
"""

import ast
import json
import os
import resource
import sys

MESSAGE_CHARS = 300


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MESSAGE_CHARS]


def _got(test: str, ns: dict) -> str:
    """For a failed ``assert CALL == EXPECTED``: what the call returned (evaluated again)."""
    try:
        node = ast.parse(test).body
        if len(node) != 1 or not isinstance(node[0], ast.Assert):
            return ""
        cmp = node[0].test
        if not (isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq)):
            return ""
        value = eval(compile(ast.Expression(cmp.left), "<test>", "eval"), ns)
        return f"; got {value!r}"[:MESSAGE_CHARS]
    except BaseException:  # noqa: BLE001 (only a hint: never let it fail the harness)
        return ""


def _limit(limits: dict) -> None:
    for name, value in limits.items():
        soft, hard = (value, value + 1) if name == "RLIMIT_CPU" else (value, value)
        resource.setrlimit(getattr(resource, name), (soft, hard))


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the program's input() sees an empty stdin, not the job
    os.close(null)
    pipe = os.fdopen(job.pop("fd"), "w", buffering=1)
    tag = job.pop("tag")

    def report(*fields) -> None:
        pipe.write(json.dumps([tag, *fields]) + "\n")
        pipe.flush()

    _limit(job.pop("limits"))
    report("start")
    ns = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        exec(compile(job["program"], "<solution>", "exec"), ns)
        if job["setup"]:
            exec(compile(job["setup"], "<setup>", "exec"), ns)
    except BaseException as e:  # noqa: BLE001 (SystemExit, MemoryError, anything: report it)
        report("load", _describe(e))
        os._exit(0)
    for i, test in enumerate(job["tests"]):
        try:
            exec(compile(test, f"<test {i + 1}>", "exec"), ns)
            report("test", i, "")
        except BaseException as e:  # noqa: BLE001
            report("test", i, _describe(e) + (_got(test, ns) if isinstance(e, AssertionError) else ""))
    report("done")
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 (the program may have closed or replaced them)
        pass
    os._exit(0)  # skip interpreter shutdown: atexit hooks and finalizers are the program's


if __name__ == "__main__":
    main()
