"""The code sandbox: verdicts, bounded output, and the attacks it must contain.

These run real processes under the strongest isolation this machine has (CI installs bubblewrap;
the tests that need it skip, saying so, where it is missing). Limits are short so that the
time-outs cost seconds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from marft.envs.code.isolation import NOBODY, probe
from marft.envs.code.sandbox import Job, Limits, Sandbox, Status

ADD = "def add(a, b):\n    return a + b\n"
LIMITS = Limits(wall_seconds=3.0, cpu_seconds=2, memory_mb=512, processes=8, output_bytes=200_000)
CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def box() -> Sandbox:
    return Sandbox(LIMITS)


needs_bwrap = pytest.mark.skipif(
    probe().isolation != "bwrap", reason="bubblewrap is not installed here (apt-get install bubblewrap)"
)


def _sandbox_processes() -> int:
    """Processes of the sandbox user (root parents run sandboxes as nobody)."""
    uid = NOBODY if os.geteuid() == 0 else os.geteuid()
    if uid != NOBODY:
        return 0  # cannot tell sandboxes from our own processes
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            n += os.stat(f"/proc/{pid}").st_uid == uid
    return n


def _no_leftovers() -> bool:
    deadline = time.monotonic() + 10
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    return _sandbox_processes() == 0


def test_a_right_program_passes_and_a_wrong_one_fails_per_test(box):
    ok = box.run(Job(ADD, ("assert add(1, 2) == 3", "assert add(2, 2) == 4")))
    assert ok.status is Status.PASSED and ok.failures == ("", "") and ok.fraction == 1.0
    wrong = box.run(Job(ADD.replace("+", "-"), ("assert add(1, 2) == 3", "assert add(2, 2) == 0")))
    assert wrong.status is Status.FAILED and wrong.passed == 1 and wrong.fraction == 0.5
    assert wrong.failures[0] == "AssertionError; got -1"  # what the call returned, for feedback
    assert wrong.detail == "1 of 2 tests passed"


def test_setup_runs_before_the_tests_and_errors_name_their_kind(box):
    r = box.run(Job(ADD, ("assert add(x, 1) == 3", "add(1)"), setup="x = 2"))
    assert r.failures[0] == ""
    assert r.failures[1].startswith("TypeError: add() missing 1 required positional argument")
    broken = box.run(Job("def add(a, b):\n    return a +", ("assert add(1, 2) == 3",)))
    assert broken.status is Status.FAILED and "SyntaxError" in broken.detail


def test_input_is_empty_and_prints_are_kept_bounded(box):
    r = box.run(Job("print('hi')\nimport sys\nprint('oops', file=sys.stderr)\nx = input()", ()))
    assert r.status is Status.FAILED and "EOFError" in r.detail  # the job is not readable as stdin
    assert r.stdout == "hi\n" and r.stderr == "oops\n"


def test_infinite_loop_times_out_by_cpu():
    box = Sandbox(Limits(wall_seconds=60.0, cpu_seconds=1))  # the CPU limit, not the wall clock, ends it
    r = box.run(Job(ADD + "while True:\n    pass", ("assert add(1, 2) == 3",)))
    assert r.status is Status.TIMEOUT and "1 s of CPU" in r.detail


def test_long_sleep_times_out_by_wall_clock(box):
    r = box.run(Job("import time\ntime.sleep(600)", ("pass",)))
    assert r.status is Status.TIMEOUT and f"{LIMITS.wall_seconds:g} s wall" in r.detail


def test_tests_passed_before_a_hang_still_count(box):
    r = box.run(Job(ADD, ("assert add(1, 2) == 3", "while True: pass", "assert add(0, 0) == 0")))
    assert r.status is Status.TIMEOUT and r.failures[0] == "" and r.failures[1:] == ("not run", "not run")


@needs_bwrap
def test_fork_bomb_is_contained_and_leaves_no_process(box):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    r = box.run(Job(bomb, ("pass",)))
    assert r.status is Status.TIMEOUT
    assert _no_leftovers()
    assert box.run(Job(ADD, ("assert add(1, 2) == 3",))).status is Status.PASSED  # the pool is fine


def test_memory_bomb_is_out_of_memory(box):
    for program in ("x = bytearray(10**11)", "xs = []\nwhile True:\n    xs.append(bytearray(10**7))"):
        r = box.run(Job(program, ("pass",)))
        assert r.status is Status.OOM, (program, r.detail)


def test_a_gigabyte_of_output_is_cut_off(box):
    r = box.run(Job("while True:\n    print('x' * 100_000)", ()))
    assert r.status is Status.KILLED and "printed more than" in r.detail  # not a time-out
    assert len(r.stdout) == LIMITS.kept_chars


@needs_bwrap
def test_cannot_write_outside_its_folder_nor_delete_the_checkout(box, tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("safe")
    os.chmod(tmp_path, 0o777)
    os.chmod(target, 0o666)  # writable by anyone: only the read-only view protects it
    attack = f"import shutil, os\nopen({str(target)!r}, 'w').write('pwned')\n"
    assert box.run(Job(attack, ())).status is Status.FAILED
    delete = f"import shutil\nshutil.rmtree({str(CHECKOUT)!r})"
    r = box.run(Job(delete, ()))
    # read-only, or not even visible (a checkout under /tmp is hidden by the sandbox's own /tmp)
    assert r.status is Status.FAILED
    assert any(why in r.detail for why in ("Read-only", "Permission", "FileNotFound")), r.detail
    assert target.read_text() == "safe" and (CHECKOUT / "pyproject.toml").is_file()
    own = box.run(
        Job(
            "open('scratch.txt', 'w').write('x' * 100)\nok = open('scratch.txt').read() == 'x' * 100",
            ("assert ok",),
        )
    )
    assert own.status is Status.PASSED  # its own folder is writable


def test_cannot_read_the_parents_environment(box, monkeypatch):
    monkeypatch.setenv("MARFT_TEST_SECRET", "hunter2-secret")
    steal = (
        "import os, glob\n"
        "print(dict(os.environ))\n"
        "for p in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        print(open(p, 'rb').read())\n"
        "    except OSError:\n"
        "        pass"
    )
    r = box.run(Job(steal, ()))
    assert "hunter2" not in r.stdout + r.stderr


@needs_bwrap
def test_cannot_reach_a_listener_on_localhost(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    seen: list[object] = []

    def accept() -> None:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                seen.append(server.accept())
            except OSError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    r = box.run(
        Job(
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'x')",
            (),
        )
    )
    t.join()
    server.close()
    assert r.status is Status.FAILED and seen == []


def test_killing_the_parent_does_not_reach_the_trainer(box):
    me = os.getpid()
    attack = (
        f"import os, signal\nfor pid in ({me}, os.getppid(), 1):\n    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass"
    )
    r = box.run(Job(attack + "\n" + ADD, ("assert add(1, 2) == 3",)))
    assert r.status in (Status.PASSED, Status.KILLED)  # it may take its own sandbox down, nothing else
    assert box.run(Job(ADD, ("assert add(1, 2) == 3",))).status is Status.PASSED


def test_exits_in_odd_places_fail_without_harm(box):
    r = box.run(Job("import sys\nsys.exit(0)\n" + ADD, ("assert add(1, 2) == 3",)))
    assert r.status is Status.FAILED and "SystemExit" in r.detail
    r = box.run(Job(ADD + "import os\nos._exit(0)", ("assert add(1, 2) == 3",)))
    assert r.status is Status.FAILED and r.failures == ("not run",)
    in_test = ADD.replace("return a + b", "import sys; sys.exit(0)")
    r = box.run(Job(in_test, ("assert add(1, 2) == 3", "assert True")))
    assert r.failures == ("SystemExit: 0", "")
    r = box.run(Job(ADD, ("assert add(1, 2) == 3", "import os; os._exit(0)", "assert True")))
    assert r.status is Status.FAILED and r.failures == ("", "not run", "not run")
    assert "exited before the tests ended" in r.detail


def test_segfault_is_killed(box):
    r = box.run(Job("import ctypes\nctypes.string_at(0)", ("pass",)))
    assert r.status is Status.KILLED and "SIGSEGV" in r.detail


def test_a_hang_or_crash_in_the_programs_process_mid_tests_keeps_the_tests_before_it(box):
    """The program's process, not the checker, spins (CPU limit) or dies during test 2."""
    spin = ADD.replace("return a + b", "while a == 2:\n        pass\n    return a + b")
    r = box.run(Job(spin, ("assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 0) == 0")))
    assert r.status is Status.TIMEOUT and "of CPU" in r.detail
    assert r.failures[0] == "" and r.failures[1].endswith("killed by SIGXCPU") and r.failures[2] == "not run"
    crash = ADD.replace(
        "return a + b", "if a == 2:\n        import ctypes\n        ctypes.string_at(0)\n    return a + b"
    )
    r = box.run(Job(crash, ("assert add(1, 2) == 3", "assert add(2, 2) == 4")))
    assert r.status is Status.KILLED and "SIGSEGV" in r.detail
    assert r.failures == ("", "ProgramGone: killed by SIGSEGV")


def test_team_tests_run_in_the_programs_process_and_never_decide_the_verdict(box):
    r = box.run(
        Job(ADD, ("assert add(1, 2) == 3",), team_tests=("assert add(2, 2) == 5", "assert add(1, 1) == 2"))
    )
    assert r.status is Status.PASSED and r.failures == ("",)
    assert r.team_failures == ("AssertionError; got 4", "")
    # a team test sees the program's namespace, as the program's own code would
    leaky = box.run(Job("x = 41\n" + ADD, ("assert add(1, 2) == 3",), team_tests=("assert x == 41",)))
    assert leaky.team_failures == ("",)


def test_map_runs_in_parallel_in_order_and_never_raises(box):
    jobs = [Job(ADD, (f"assert add({i}, 1) == {i + 1}",)) for i in range(6)]
    jobs.append(Job("import time\ntime.sleep(600)", ()))
    jobs.append(Job("import ctypes\nctypes.string_at(0)", ()))
    results = box.map(jobs)
    assert [r.status for r in results] == [Status.PASSED] * 6 + [Status.TIMEOUT, Status.KILLED]


def test_a_sandbox_that_cannot_start_reports_killed(monkeypatch):
    box = Sandbox(LIMITS)
    monkeypatch.setattr(box, "_command", lambda: ["/nonexistent/python"])
    r = box.run(Job(ADD, ("assert add(1, 2) == 3",)))
    assert r.status is Status.KILLED and r.failures == ("not run",)


def test_limits_are_validated():
    from marft.config import ConfigError

    with pytest.raises(ConfigError, match="wall_seconds"):
        Limits(wall_seconds=0)


@pytest.mark.parametrize("isolation", ["unshare", "none"])
def test_weaker_fallbacks_warn_what_is_missing_and_still_judge(isolation, caplog):
    from marft.envs.code.isolation import warn_if_weak

    try:
        probe(isolation)
    except RuntimeError:
        pytest.skip(f"{isolation} does not work here")
    warn_if_weak.cache_clear()
    with caplog.at_level("WARNING"):
        weak = Sandbox(LIMITS, isolation=isolation)
    assert (
        "weaker than it should be" in caplog.text
        and "not read-only" in caplog.text
        or "no namespaces" in caplog.text
    )
    jobs = [
        Job(ADD, ("assert add(1, 2) == 3",)),
        Job(ADD.replace("+", "-"), ("assert add(1, 2) == 3",)),
        Job("import time\ntime.sleep(600)", ()),
        Job("x = bytearray(10**11)", ()),
    ]
    statuses = [r.status for r in weak.map(jobs)]
    assert statuses == [Status.PASSED, Status.FAILED, Status.TIMEOUT, Status.OOM]


@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_a_child_left_behind_neither_delays_the_verdict_nor_outlives_the_run(isolation, tmp_path):
    box = Sandbox(Limits(wall_seconds=60.0), isolation=isolation)
    marker = tmp_path / "alive"
    os.chmod(tmp_path, 0o777)
    leave = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    time.sleep(1.5)\n"
        f"    open({str(marker)!r}, 'w').write('still alive')\n"
        "    os._exit(0)\n" + ADD
    )
    r = box.run(Job(leave, ("assert add(1, 2) == 3",)))
    assert r.status is Status.PASSED  # held until the wall clock, it would be a time-out
    time.sleep(2.0)
    assert not marker.exists()  # the child was killed with the run


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root parent runs sandboxes as another user")
def test_without_namespaces_fork_bombs_leave_no_zombies_to_use_up_the_process_limit():
    """Without a pid namespace a bomb's processes are re-parented when it is killed; a pid 1 that
    never reaps them (as in many containers) would leave zombies of the sandbox user that count
    against its process limit, and after two bombs no program could start (CI saw this)."""
    box = Sandbox(LIMITS, isolation="none", workers=2)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    for _ in range(2):  # one after the other: at once, one bomb starves the other (same user)
        assert box.run(Job(bomb, ("pass",))).status is Status.TIMEOUT
    for _ in range(3):
        r = box.run(Job(ADD, ("assert add(1, 2) == 3",)))
        assert r.status is Status.PASSED, r.detail
    assert _no_leftovers()
