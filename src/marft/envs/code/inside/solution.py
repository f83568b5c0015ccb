"""The program's process: load the untrusted program, then answer the checker's requests.

It holds the program, the setup and nothing else of the job: no test, no expected value, no
channel to the trainer. What it sends back is the program's answer, whatever code produced it.

Requests (one frame each, from the checker) and their replies:

* ``["names", [name, ...]]``: ``["ok", [[name, node], ...]]`` for the names the program defines
  (a module as ``["M", its name]``, anything not plain as a handle);
* ``["call", handle, args, kwargs]``: call a function or class of the program; ``["ok", node]``;
* ``["run", source, call]``: run a team's statement in the program's namespace; ``["ok", null]``.
  When it is ``assert CALL == EXPECTED`` and fails, the reply's fourth field says what ``CALL``
  (the source given) returned.

Any request may instead get ``["raise", exception type, message]``. The first reply, unasked, says
whether the program (and the setup after it) loaded.

Runs inside the sandbox (see :mod:`marft.envs.code.inside`): the standard library only.
"""

from __future__ import annotations

import os
import sys

from marft.envs.code.inside.wire import MESSAGE_CHARS, NotPlainData, WireError, decode, encode, receive, send

REQUEST_BYTES = 1 << 30
"""Requests come from the checker (trusted): no real bound."""


def raised(exc: BaseException) -> list:
    """``["raise", type name, message]`` for an exception (its ``str`` is the program's code)."""
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 (a __str__ of the program's that fails)
        text = ""
    return ["raise", type(exc).__name__[:80], text[:MESSAGE_CHARS]]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (contextlib is one more import at every start)
            stream.flush()
        except BaseException:  # noqa: BLE001 (the program may have closed or replaced them)
            pass


def _answer(fd: int, reply: list) -> None:
    try:
        send(fd, reply)
    except (ValueError, TypeError):  # not JSON after all (an int past the digit limit)
        send(fd, ["raise", "NotPlainData", "the value cannot be written as JSON"])
    _flush()  # the checker may end this process at any time after a reply


class _Handles:
    """The program's objects the checker refers to by number."""

    def __init__(self) -> None:
        self.objects: list = []

    def node(self, obj) -> list:
        self.objects.append(obj)
        return ["H", len(self.objects) - 1, type(obj).__name__[:80]]

    def get(self, number: int, type_name: str):
        if not 0 <= number < len(self.objects):
            raise WireError(f"no handle {number}")
        return self.objects[number]


def _names(names: list, ns: dict, handles: _Handles) -> list:
    module = type(sys)
    found = []
    for name in names:
        if type(name) is not str or name not in ns:
            continue
        value = ns[name]
        if type(value) is module:
            found.append([name, ["M", str(getattr(value, "__name__", ""))]])
            continue
        try:
            found.append([name, encode(value, handles.node)])
        except NotPlainData:
            found.append([name, handles.node(value)])
    return ["ok", found]


def _run(statement: str, call: str | None, ns: dict) -> list:
    try:
        exec(compile(statement, "<team test>", "exec"), ns)
        return ["ok", None]
    except AssertionError as e:
        got = ""
        if call:
            try:
                got = f"; got {eval(compile(call, '<team test>', 'eval'), ns)!r}"[:MESSAGE_CHARS]
            except BaseException:  # noqa: BLE001 (only a hint)
                got = ""
        return [*raised(e), got]


def _serve_one(request, ns: dict, handles: _Handles) -> list:
    try:
        op = request[0]
        if op == "names":
            return _names(request[1], ns, handles)
        if op == "call":
            function = handles.get(request[1], "")
            args = decode(request[2], handles.get)
            kwargs = decode(request[3], handles.get)
            return ["ok", encode(function(*args, **kwargs), handles.node)]
        if op == "run":
            return _run(request[1], request[2], ns)
        return ["raise", "WireError", f"unknown request {op!r}"]
    except BaseException as e:  # noqa: BLE001 (SystemExit, MemoryError, anything: the program's answer)
        return raised(e)


def serve(program: str, setup: str, requests: int, replies: int) -> None:
    """Load ``program`` (then ``setup``) and answer requests on ``requests`` until it closes."""
    ns = {"__name__": "__solution__", "__builtins__": __builtins__}
    handles = _Handles()
    try:
        exec(compile(program, "<solution>", "exec"), ns)
        if setup:
            exec(compile(setup, "<setup>", "exec"), ns)
        loaded = ["ok", None]
    except BaseException as e:  # noqa: BLE001
        loaded = raised(e)
    try:
        _answer(replies, loaded)
        while loaded[0] == "ok":
            request = receive(requests, REQUEST_BYTES)
            if request is None:
                break
            _answer(replies, _serve_one(request, ns, handles))
    except (OSError, WireError):  # the checker is gone
        pass
    _flush()
    os._exit(0)  # skip interpreter shutdown: atexit hooks and finalizers are the program's
