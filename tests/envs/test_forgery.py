"""Programs that try to forge a pass: none may get ``passed`` on a task it did not solve.

The task: ``secret(x)`` must return ``7 * x + 3``. Every forgery below returns something else (or
nothing), and tries to make the verdict say otherwise: rigged values, the harness's own
functions and channels, exits at every point, a tampered interpreter, fake reports, and reading
the tests from wherever they might be. Each runs under every isolation that works here
(bubblewrap, ``unshare``, none): the guarantee comes from the split into a checker and the
program's process, not from bubblewrap. The honest program passes under each, so a sandbox that
failed everything could not pass this file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from marft.envs.code.isolation import probe
from marft.envs.code.sandbox import Job, Limits, Sandbox, Status

LIMITS = Limits(wall_seconds=4.0, cpu_seconds=2, memory_mb=512, processes=8, output_bytes=200_000)
TESTS = (
    "assert secret(2) == 17",
    "assert not secret(5) != 38",
    "assert secret(1) in {10}",
    "assert abs(secret(0) - 3) < 1e-9",
    "assert all(map(lambda xy: secret(xy[0]) == xy[1], [(4, 31), (6, 45)]))",
    "assert sorted([secret(3), secret(-1)]) == [-4, 24]",
    "assert secret(helper(1)) == 73",
)
CHECKER = "def helper(x):\n    return x + 9\n"
HONEST = "def secret(x):\n    return 7 * x + 3\n"
FORGE_LINES = (
    "import json, os, struct\n"
    "def forge_all():\n"
    "    lines = [json.dumps(['test', i, '']) for i in range(7)] + [json.dumps(['done'])]\n"
    "    old = [json.dumps([t, 'test', i, '']) for t in tags for i in range(7)]\n"
    "    old += [json.dumps([t, 'done']) for t in tags]\n"
    "    text = ('\\n'.join(lines + old) + '\\n').encode()\n"
    "    frame = json.dumps(['ok', 17]).encode()\n"
    "    frame = struct.pack('>I', len(frame)) + frame\n"
    "    for fd in range(256):\n"
    "        for data in (text, frame):\n"
    "            try:\n"
    "                os.write(fd, data)\n"
    "            except OSError:\n"
    "                pass\n"
    "tags = []\n"
)
READ_TESTS = (
    "import glob, os, re\n"
    "found = {}\n"
    "def scan(data):\n"
    "    for x, y in re.findall(rb'secret\\((-?\\d+)\\) == (-?\\d+)', data):\n"
    "        found[int(x)] = int(y)\n"
    "paths = glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ') + glob.glob('/proc/*/fd/*')\n"
    "paths += glob.glob('/proc/*/task/*/fd/*')\n"
    "for path in paths:\n"
    "    try:\n"
    "        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)\n"
    "        try:\n"
    "            scan(os.read(fd, 1 << 20))\n"
    "        finally:\n"
    "            os.close(fd)\n"
    "    except OSError:\n"
    "        pass\n"
    "for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:\n"
    "    try:\n"
    "        maps = open(f'/proc/{pid}/maps').read().splitlines()\n"
    "        with open(f'/proc/{pid}/mem', 'rb') as mem:\n"
    "            for line in maps:\n"
    "                lo, hi = (int(v, 16) for v in line.split()[0].split('-'))\n"
    "                if 'rw' in line.split()[1] and hi - lo < 1 << 28:\n"
    "                    try:\n"
    "                        mem.seek(lo)\n"
    "                        scan(mem.read(hi - lo))\n"
    "                    except (OSError, ValueError, OverflowError):\n"
    "                        pass\n"
    "    except OSError:\n"
    "        pass\n"
    "def secret(x):\n"
    "    return found.get(x, 0)\n"
)
FORGERIES = {
    "always-equal object": (
        "class Anything:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    def __ne__(self, other):\n"
        "        return False\n"
        "    __hash__ = object.__hash__\n"
        "    def __sub__(self, other):\n"
        "        return 0\n"
        "    __lt__ = __gt__ = __eq__\n"
        "def secret(x):\n"
        "    return Anything()\n"
    ),
    "int subclass with a rigged __eq__": (
        "class Int(int):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    def __ne__(self, other):\n"
        "        return False\n"
        "    def __hash__(self):\n"
        "        return hash(10)\n"
        "def secret(x):\n"
        "    return Int(0)\n"
    ),
    "str and list subclasses with a rigged __eq__": (
        "class Str(str):\n"
        "    __eq__ = lambda self, other: True\n"
        "    __hash__ = str.__hash__\n"
        "class List(list):\n"
        "    __eq__ = lambda self, other: True\n"
        "def secret(x):\n"
        "    return [Str('a'), List()][x % 2]\n"
    ),
    "rigged __hash__ and __ne__ to sit in a set": (
        "class Key:\n"
        "    def __hash__(self):\n"
        "        return hash(10)\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    def __ne__(self, other):\n"
        "        return False\n"
        "def secret(x):\n"
        "    return Key()\n"
    ),
    "walking the stack to the harness's functions": (
        "import os, sys\n"
        "frame = sys._getframe()\n"
        "while frame is not None:\n"
        "    for scope in (frame.f_locals, frame.f_globals):\n"
        "        for name in ('report', 'send', '_answer'):\n"
        "            fn = scope.get(name)\n"
        "            if callable(fn):\n"
        "                for i in range(7):\n"
        "                    for call in ((['test', i, ''],), ('test', i, ''), (1, ['ok', 17])):\n"
        "                        try:\n"
        "                            fn(*call)\n"
        "                        except Exception:\n"
        "                            pass\n"
        "                for call in (('done',), (['done'],)):\n"
        "                    try:\n"
        "                        fn(*call)\n"
        "                    except Exception:\n"
        "                        pass\n"
        "    frame = frame.f_back\n"
        "os._exit(0)\n"
    ),
    "gc scan for a tag and the channels": FORGE_LINES
    + (
        "import gc, re\n"
        "for obj in gc.get_objects():\n"
        "    cells = getattr(obj, '__closure__', None) or ()\n"
        "    for cell in cells:\n"
        "        try:\n"
        "            value = cell.cell_contents\n"
        "        except ValueError:\n"
        "            continue\n"
        "        if isinstance(value, str) and re.fullmatch('[0-9a-f]{32}', value):\n"
        "            tags.append(value)\n"
        "forge_all()\n"
        "def secret(x):\n"
        "    forge_all()\n"
        "    return 0\n"
    ),
    "writing forged reports and replies to every descriptor": FORGE_LINES
    + "forge_all()\ndef secret(x):\n    forge_all()\n    return 17\n",
    "os._exit(0) before the tests": "import os\ndef secret(x):\n    return 0\nos._exit(0)\n",
    "os._exit(0) inside a test": "import os\ndef secret(x):\n    os._exit(0)\n",
    "os._exit(0) between tests": (
        "import os\ncalls = []\ndef secret(x):\n    calls.append(x)\n    if len(calls) > 1:\n"
        "        os._exit(0)\n    return 0\n"
    ),
    "sys.exit(0) before and inside tests": "import sys\ndef secret(x):\n    sys.exit(0)\nsys.exit(0)\n",
    "SystemExit raised from __del__": (
        "class Bye:\n"
        "    def __del__(self):\n"
        "        raise SystemExit(0)\n"
        "def secret(x):\n"
        "    Bye()\n"
        "    return Bye()\n"
    ),
    "StopIteration to end the test's iteration early": "def secret(x):\n    raise StopIteration\n",
    "monkeypatching builtins, operator and unittest": (
        "import builtins, operator, unittest\n"
        "builtins.abs = lambda x: 0\n"
        "builtins.sorted = lambda xs: [-4, 24]\n"
        "builtins.all = lambda xs: True\n"
        "builtins.AssertionError = type('Quiet', (Exception,), {})\n"
        "operator.eq = operator.__eq__ = lambda a, b: True\n"
        "unittest.TestCase.assertEqual = lambda *a, **k: None\n"
        "def secret(x):\n"
        "    return 0\n"
    ),
    "replacing the checker's helper": (
        "def helper(x):\n    return 0\ndef secret(x):\n    return 73 if x == 0 else 0\n"
    ),
    "printing fake result lines": (
        "import json, sys\n"
        "for i in range(7):\n"
        "    print(json.dumps(['test', i, '']))\n"
        "    print(json.dumps(['test', i, '']), file=sys.stderr)\n"
        "print(json.dumps(['done']))\n"
        "def secret(x):\n"
        "    print(json.dumps(['done']))\n"
        "    return 0\n"
    ),
    "reading the tests from /proc and other processes' memory": READ_TESTS,
    "signalling the checker": (
        "import os, signal\n"
        "def secret(x):\n"
        "    for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGSTOP):\n"
        "        try:\n"
        "            os.kill(os.getppid(), sig)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return 0\n"
    ),
    "a reply too large for the checker": (
        "import os, struct\n"
        "def secret(x):\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            os.write(fd, struct.pack('>I', 2**31) + b'[')\n"
        "        except OSError:\n"
        "            pass\n"
        "    return 0\n"
    ),
}
NOT_A_PASS = (Status.FAILED, Status.TIMEOUT, Status.KILLED)


def _isolations() -> list:
    out = []
    for isolation in ("bwrap", "unshare", "none"):
        try:
            probe(isolation)
            out.append(isolation)
        except RuntimeError:
            out.append(
                pytest.param(isolation, marks=pytest.mark.skip(reason=f"{isolation} does not work here"))
            )
    return out


@pytest.fixture(scope="module", params=_isolations())
def box(request) -> Sandbox:
    return Sandbox(LIMITS, isolation=request.param, workers=2)


def _job(program: str) -> Job:
    return Job(program, TESTS, entry_point="secret", checker=CHECKER)


def test_the_honest_program_passes(box):
    r = box.run(_job(HONEST))
    assert r.status is Status.PASSED, r.detail
    assert r.failures == ("",) * len(TESTS)


def test_no_forgery_passes(box):
    """All 19 patterns (18 without namespaces), run in parallel: none passes, and none passes even
    one test."""
    forgeries = dict(FORGERIES)
    if box.setup.isolation == "none":
        # Without namespaces the program sees every process of its user: in 3 of about 100 runs of
        # the pattern, it found the tests in another process's memory (not diagnosed; documented as
        # a gap of isolation none in docs/code.md).
        del forgeries["reading the tests from /proc and other processes' memory"]
    results = box.map([_job(program) for program in forgeries.values()])
    for (name, _), r in zip(forgeries.items(), results, strict=True):
        assert r.status in NOT_A_PASS, (name, r.detail)
        assert r.passed == 0, (name, r.failures)


def test_a_forgery_bolted_onto_a_wrong_answer_changes_nothing(box):
    """Fake reports and a tampered interpreter, with a program that gets one test right: exactly
    the test it answers right passes. (Writing to its own reply channel breaks the protocol: the
    checker then ends the program's process, and every test fails.)"""
    half = "\ndef secret(x):\n    return 17 if x == 2 else 0\n"
    for name in ("printing fake result lines", "monkeypatching builtins, operator and unittest"):
        program = FORGERIES[name].rsplit("def secret", 1)[0] + half
        r = box.run(_job(program))
        assert r.status is Status.FAILED and r.failures[0] == "" and r.passed == 1, (name, r.failures)


def test_a_value_that_is_not_plain_data_is_a_failed_test(box):
    """Functions, generators and objects are handles: passed back in, fine; compared, a failure."""
    program = (
        "class Box:\n    def __init__(self, v):\n        self.v = v\n"
        "def unbox(b):\n    return b.v\n"
        "def secret(x):\n    return (i for i in range(x))\n"
    )
    tests = ("assert unbox(Box(3)) == 3", "assert list(secret(2)) == [0, 1]", "assert secret(2) == 0")
    r = box.run(Job(program, tests, entry_point="secret"))
    assert r.failures[0] == ""
    assert r.failures[1].startswith("NotPlainData: the program gave a generator")
    assert r.failures[2].startswith("NotPlainData")
    assert r.status is Status.FAILED


@pytest.mark.skipif(
    probe().isolation != "bwrap", reason="bubblewrap is not installed here (apt-get install bubblewrap)"
)
def test_the_tests_on_disk_are_out_of_reach_under_bubblewrap():
    """A dataset file the sandbox user could read (world-readable, outside ``/tmp``, its path known to
    the program): under bubblewrap the program sees only the system folders and its interpreter's,
    so the file is not there. Without bubblewrap it is, and the same program passes: the file system
    is the host's (docs/code.md says so)."""
    folder = Path(tempfile.mkdtemp(prefix="marft-forgery-", dir="/var/tmp"))
    try:
        os.chmod(folder, 0o755)
        data = folder / "tests.jsonl"
        data.write_text("\n".join(TESTS) + "\n")
        os.chmod(data, 0o644)
        steal = (
            "import re\nfound = {}\ntry:\n"
            f"    text = open({str(data)!r}).read()\n"
            "    found = {int(x): int(y) for x, y in re.findall(r'secret\\((-?\\d+)\\) == (-?\\d+)', text)}\n"
            "except OSError:\n    pass\n"
            "def secret(x):\n    return found.get(x, 0)\n"
        )
        r = Sandbox(LIMITS, isolation="bwrap").run(_job(steal))
        assert r.status is Status.FAILED and r.passed == 0, r.failures
        weak = Sandbox(LIMITS, isolation="none").run(_job(steal))
        assert weak.failures[0] == ""  # found on disk without bubblewrap: secret(2) == 17
    finally:
        shutil.rmtree(folder, ignore_errors=True)
