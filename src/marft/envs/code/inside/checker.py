"""The checker: runs the task's tests, calling into the program's process for every value.

The checker holds the tests and the verdict channel; the program's process holds neither. In the
checker's namespace the program's functions and classes are :class:`Remote` stubs: calling one
sends the arguments as plain data, and the result comes back as plain data rebuilt from builtins
(:mod:`marft.envs.code.inside.wire`), or as another :class:`Remote` that refuses to be compared,
hashed, tested for truth or iterated. So every ``==`` of a test compares builtin values with the
interpreter's own ``==``, and an always-equal object, a rigged subclass or a tampered ``builtins``
stays in the program's process, where no test runs.

Which names come from the program: the job's entry point always; every other name a test uses that
is neither a builtin nor defined by the checker's own code (a HumanEval prompt's helpers, its
``check``) and that the program defines. A module the program imported is the checker's own
import of the same module. ``candidate`` (HumanEval's name for the function) is the entry point.

Runs inside the sandbox (see :mod:`marft.envs.code.inside`): the standard library only.
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
import time

from marft.envs.code.inside.wire import MESSAGE_CHARS, NotPlainData, WireError, decode, encode, receive, send

REPLY_BYTES = 32 << 20
"""The largest reply the program's process may send (a bigger one ends it)."""


class ProgramError(Exception):
    """The program raised (``kind`` is its exception's type name) or is gone."""

    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.hint = hint
        """What the call in a failed ``assert CALL == EXPECTED`` returned (a team's statement)."""


class Program:
    """The checker's end of the program's process: requests out, plain values back."""

    def __init__(self, pid: int, requests: int, replies: int) -> None:
        self.pid, self.requests, self.replies = pid, requests, replies
        self.gone = ""
        """Empty while the process serves; else how it ended ("killed by signal 24", ...)."""
        self.end_event: list | None = None

    def ask(self, request: list | None):
        """Send ``request`` (None: only read the next reply) and return the reply's value."""
        if self.gone:
            raise ProgramError("ProgramGone", self.gone)
        try:
            if request is not None:
                send(self.requests, request)
            reply = receive(self.replies, REPLY_BYTES)
        except WireError as e:
            self.bury(["protocol", str(e)[:MESSAGE_CHARS]])
            raise ProgramError("ProgramGone", self.gone) from None
        except OSError:
            reply = None
        if reply is None:
            self.bury(None)
            raise ProgramError("ProgramGone", self.gone)
        if type(reply) is not list or not reply or reply[0] not in ("ok", "raise"):
            self.bury(["protocol", f"an unreadable reply: {str(reply)[:80]}"])
            raise ProgramError("ProgramGone", self.gone)
        if reply[0] == "raise":
            kind = reply[1] if len(reply) > 1 and type(reply[1]) is str else "Exception"
            text = reply[2] if len(reply) > 2 and type(reply[2]) is str else ""
            hint = reply[3] if len(reply) > 3 and type(reply[3]) is str else ""
            raise ProgramError(kind[:80], text[:MESSAGE_CHARS], hint[:MESSAGE_CHARS])
        return reply[1] if len(reply) > 1 else None

    def call(self, number: int, args: tuple, kwargs: dict):
        nodes = [encode(args, _handle_of), encode(kwargs, _handle_of)]
        try:
            return decode(self.ask(["call", number, *nodes]), self.remote)
        except WireError as e:
            raise ProgramError("NotPlainData", f"the program's reply: {e}") from None

    def remote(self, number: int, type_name: str) -> Remote:
        return Remote(self, number, type_name)

    def bury(self, how: list | None) -> None:
        """End the program's process and note how it ended (``how``: why the checker ended it)."""
        if self.gone:
            return
        for _ in range(200):  # it closed its end by exiting: it is a zombie within microseconds
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done or how is not None:
                break
            time.sleep(0.001)
        if not done:
            os.kill(self.pid, signal.SIGKILL)
            done, status = os.waitpid(self.pid, 0)
            how = how or ["protocol", "it closed its channel"]
        if how is None:
            signaled = os.WIFSIGNALED(status)
            code = os.WTERMSIG(status) if signaled else os.WEXITSTATUS(status)
            how = ["signal" if signaled else "exit", code]
        self.end_event = ["gone", *how]
        if how[0] == "signal":
            name = signal.Signals(how[1]).name if how[1] in signal.Signals._value2member_map_ else how[1]
            self.gone = f"killed by {name}"
        elif how[0] == "exit":
            self.gone = f"exited with code {how[1]}"
        else:
            self.gone = f"broke the protocol: {how[1]}"


def _handle_of(value) -> list:
    if type(value) is Remote:
        return ["H", value._number, ""]
    raise NotPlainData(f"a test passed a {type(value).__name__}, which is not plain data")


class Remote:
    """An object of the program's: it can be called and passed back, nothing else."""

    __slots__ = ("_program", "_number", "_type")

    def __init__(self, program: Program, number: int, type_name: str) -> None:
        self._program, self._number, self._type = program, number, type_name

    def __call__(self, *args, **kwargs):
        return self._program.call(self._number, args, kwargs)

    def _refuse(self, *args):
        raise ProgramError("NotPlainData", f"the program gave a {self._type}, not plain data")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __bool__ = __len__ = __iter__ = __contains__ = __hash__ = __getattr__ = _refuse

    def __repr__(self) -> str:
        return f"<{self._type} of the program>"


def describe(exc: BaseException) -> str:
    kind = exc.kind if isinstance(exc, ProgramError) else type(exc).__name__
    text = f"{kind}: {exc}" if str(exc) else kind
    return text[:MESSAGE_CHARS]


def bind(job: dict, ns: dict, program: Program) -> None:
    """Put the program's names the tests use into the checker's namespace ``ns``."""
    entry = job["entry_point"]
    wanted = [n for n in job["names"] if n == entry or (n not in ns and n not in vars(builtins))]
    found = program.ask(["names", wanted]) if wanted else []
    values = {}
    for pair in found if type(found) is list else ():
        if type(pair) is list and len(pair) == 2 and pair[0] in wanted:
            values[pair[0]] = pair[1]
    for name in wanted:
        node = values.get(name)
        module = type(node) is list and len(node) == 2 and node[0] == "M" and type(node[1]) is str
        if name in values and not module:
            try:  # noqa: SIM105 (contextlib is one more import at every start)
                ns[name] = decode(node, program.remote)
            except WireError:
                pass
            continue
        # a module the program imported, or one the tests use: the checker's own import of it
        module_name = node[1] if module else name
        if module_name in sys.modules and (module or module_name in job["imports"]):
            ns[name] = sys.modules[module_name]
    if entry and entry in ns:
        ns["candidate"] = ns[entry]


def _got(job: dict, i: int, ns: dict) -> str:
    """For a failed ``assert CALL == EXPECTED``: what the call returned (evaluated again)."""
    left = job["got"][i] if i < len(job["got"]) else None
    if not left:
        return ""
    try:
        return f"; got {eval(compile(left, '<test>', 'eval'), ns)!r}"[:MESSAGE_CHARS]
    except BaseException:  # noqa: BLE001 (only a hint: never let it fail the checker)
        return ""


def check(job: dict, program: Program, report) -> None:
    """Run the job's tests, then the team's, reporting each; ``report`` writes one event."""
    ns = {"__name__": "__checker__", "__builtins__": builtins}
    try:
        program.ask(None)  # the program's first reply: loaded, or what it raised
        exec(compile(job["checker"], "<checker>", "exec"), ns)
        bind(job, ns, program)
    except ProgramError as e:
        if not program.gone:  # how it ended is the launcher's to report
            report("load", describe(e))
        return
    except BaseException as e:  # noqa: BLE001 (the task's own code: never the program's doing)
        report("load", f"the task's checker code raised {describe(e)}")
        return
    tests, team = job["tests"], job["team_tests"]
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"<test {i + 1}>", "exec"), ns)
            report("test", i, "")
        except BaseException as e:  # noqa: BLE001 (the test's own SystemExit too: it fails)
            report("test", i, describe(e) + (_got(job, i, ns) if isinstance(e, AssertionError) else ""))
        if program.gone:
            return
    for j, test in enumerate(team):
        try:
            program.ask(["run", test, job["team_got"][j]])
            report("test", len(tests) + j, "")
        except ProgramError as e:
            report("test", len(tests) + j, describe(e) + e.hint)
            if program.gone:
                return
