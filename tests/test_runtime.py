"""CPU threads: torch gets as many as this process may use (affinity, cgroup quota), fewer while
other processes take some of those cores (the ThreadGovernor, fed fake /proc/stat here)."""

import json
import os

import pytest
import torch

from marft.runtime import (
    WAIT_POLICY_VARIABLES,
    ThreadGovernor,
    cgroup_cpu_quota,
    configure_threads,
    cpu_ticks,
    usable_cpus,
)
from marft.trainer.phases import PhaseMeter


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_the_process_cgroup(tmp_path):
    write(tmp_path / "proc", "0::/job.slice/step\n")
    write(tmp_path / "cg" / "job.slice" / "step" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") == 1.5
    write(tmp_path / "cg" / "job.slice" / "step" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") is None


def test_cgroup_v2_quota_at_the_mount_root_inside_a_container(tmp_path):
    write(tmp_path / "proc", "0::/\n")
    write(tmp_path / "cg" / "cpu.max", "300000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") == 3.0


def test_cgroup_v1_quota_and_no_limit(tmp_path):
    write(tmp_path / "proc", "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    folder = tmp_path / "cg" / "cpu,cpuacct" / "docker" / "abc"
    write(folder / "cpu.cfs_quota_us", "50000\n")
    write(folder / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") == 0.5
    write(folder / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") is None
    assert cgroup_cpu_quota(tmp_path / "nothing", tmp_path / "no-proc") is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_threads_follow_the_affinity_mask_and_the_override():
    mask, threads = os.sched_getaffinity(0), torch.get_num_threads()
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert usable_cpus() == 1
        assert configure_threads(0) == 1 and torch.get_num_threads() == 1
        assert configure_threads(3) == 3 and torch.get_num_threads() == 3  # run.torch_threads wins
    finally:
        os.sched_setaffinity(0, mask)
        torch.set_num_threads(threads)
    assert 1 <= usable_cpus() <= len(mask)


def test_the_cli_leaves_openmp_waiting_to_openmp_or_the_user():
    import subprocess
    import sys

    code = (
        "import os\nfrom marft.cli import main\ntry: main(['--no-such-option'])\nexcept SystemExit: pass\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in WAIT_POLICY_VARIABLES}
    run = lambda e: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True
    ).stdout.split()
    assert run(env) == ["None", "None"]  # GNU OpenMP's default spin (issue 32)
    assert run({**env, "OMP_WAIT_POLICY": "PASSIVE"}) == ["PASSIVE", "None"]
    assert run({**env, "GOMP_SPINCOUNT": "50"}) == ["None", "50"]


def test_the_start_up_line_says_the_thread_count(tmp_path, capsys):
    from marft.trainer import train
    from tests.conftest import small_config

    cfg = small_config("run.iterations=1", "run.progress=true", "run.checkpoint_every=0")
    train(cfg, tmp_path / "run")
    out = capsys.readouterr()
    assert f"on cpu with {usable_cpus()} CPU threads" in out.out + out.err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= rows[0]["torch_threads"] <= usable_cpus()  # fewer while other processes are busy


@pytest.fixture
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class FakeMachine:
    """A /proc/stat file and this process's CPU clock that the test advances by hand: each step
    is ``seconds`` of wall time in which each CPU was busy ``busy[i]`` of it (all processes), and
    this process used ``own`` cores."""

    def __init__(self, tmp_path, n_cpus=2):
        self.path, self.n = tmp_path / "stat", n_cpus
        self.busy, self.idle, self.own_s = [1000] * n_cpus, [5000] * n_cpus, 20.0
        self.write()

    def write(self):
        lines = [f"cpu  {sum(self.busy)} 0 0 {sum(self.idle)} 0 0 0 0 0 0"]
        # user nice system idle iowait irq softirq steal guest guest_nice; busy split over user/system
        lines += [
            f"cpu{i} {b - b // 4} 0 {b // 4} {i_} 0 0 0 0 0 0"
            for i, (b, i_) in enumerate(zip(self.busy, self.idle, strict=True))
        ]
        self.path.write_text("\n".join([*lines, "intr 12345 1 2 3", "ctxt 99", ""]))

    def step(self, seconds, busy, own):
        for i, cores in enumerate(busy):
            self.busy[i] += round(100 * seconds * cores)
            self.idle[i] += round(100 * seconds * (1 - cores))
        self.own_s += seconds * own
        self.write()

    def governor(self, usable=2, **kw):
        return ThreadGovernor(
            usable, stat_path=self.path, own_cpu=lambda: self.own_s, cpus=range(self.n), clk_tck=100, **kw
        )


def test_cpu_ticks_sum_the_cpus_of_the_affinity_mask():
    stat = (
        "cpu  9 9 9 9 9 9 9 9\ncpu0 10 1 5 100 3 1 1 2 4 0\ncpu1 20 0 0 50 0 0 0 0\nintr 1 2\ncpu9 1 1 1 1\n"
    )
    # busy: user + nice + system + irq + softirq (guest is inside user); total adds idle, iowait, steal
    assert cpu_ticks(stat) == (18 + 20, 18 + 105 + 20 + 50, 2)
    assert cpu_ticks(stat, {1}) == (20, 70, 1)
    assert cpu_ticks(stat, {5}) is None and cpu_ticks("") is None


def test_the_governor_gives_up_the_cores_other_processes_take_and_takes_them_back(
    tmp_path, keep_torch_threads
):
    m = FakeMachine(tmp_path)
    g = m.governor()
    assert g.enabled and g.threads == 2
    m.step(1.0, busy=[1, 1], own=2)  # idle machine: both cores are ours (spinning counts as busy)
    assert g.adapt() == 2 and g.others == 0.0
    m.step(1.0, busy=[1, 1], own=1)  # another process keeps one core busy: (200 - 100) / 100 = 1 core
    assert g.adapt() == 1 and g.others == 1.0 and torch.get_num_threads() == 1
    m.step(2.0, busy=[1, 1], own=1)  # still there, we run one thread beside it
    assert g.adapt() == 1
    m.step(1.0, busy=[1, 0.4], own=1)  # others 0.4 core: between 0.25 and 0.5, so no flip back
    assert g.adapt() == 1 and g.others == pytest.approx(0.4)
    m.step(1.0, busy=[1, 0.1], own=1)  # others 0.1 core: below 0.25, all cores back
    assert g.adapt() == 2 and torch.get_num_threads() == 2
    m.step(1.0, busy=[1, 0.4], own=1)  # 0.4 from 2 threads: not enough to give one up either
    assert g.adapt() == 2


def test_intervals_shorter_than_half_a_second_are_not_judged_but_accumulate(tmp_path, keep_torch_threads):
    m = FakeMachine(tmp_path)
    g = m.governor()
    m.step(0.3, busy=[1, 1], own=0)  # 0.3 s of others on both cores: too short to judge
    assert g.adapt() == 2 and g.others == 0.0
    m.step(0.3, busy=[1, 1], own=0.5)  # measured from the same start: 0.6 s, (120 - 15) / 60 = 1.75 cores
    assert g.adapt() == 1 and g.others == pytest.approx(1.75)


def test_a_quota_on_a_bigger_machine_counts_only_what_leaves_too_few_cores(tmp_path, keep_torch_threads):
    m = FakeMachine(tmp_path, n_cpus=4)
    g = m.governor(usable=2)  # e.g. docker --cpus=2 on a 4-core host
    m.step(1.0, busy=[1, 1, 1, 0], own=1)  # 2 cores of others: 2 cores free for our 2 threads
    assert g.adapt() == 2 and g.others == 2.0
    m.step(1.0, busy=[1, 1, 1, 1], own=1)  # 3 cores of others: 1 free
    assert g.adapt() == 1


def test_fixed_threads_one_core_or_no_proc_never_change(tmp_path, keep_torch_threads):
    m = FakeMachine(tmp_path)
    fixed, one = m.governor(adaptive=False), m.governor(usable=1)
    missing = ThreadGovernor(2, stat_path=tmp_path / "none", own_cpu=lambda: 0.0, clk_tck=100)
    m.step(1.0, busy=[1, 1], own=0)
    assert [g.adapt() for g in (fixed, one, missing)] == [2, 1, 2]
    assert not (fixed.enabled or one.enabled or missing.enabled)
    governor = ThreadGovernor.for_run(3)  # run.torch_threads=3
    assert not governor.enabled and governor.threads == 3 == torch.get_num_threads()


def test_the_phase_meter_asks_for_each_phases_threads_and_weights_them_by_time(keep_torch_threads):
    counts = iter([1, 2])
    meter = PhaseMeter(before_phase=lambda: next(counts))
    for name in ("a", "b"):
        with meter.phase(name):
            torch.ones(2**16).sum()
    s = meter.seconds
    assert meter.mean_threads() == pytest.approx((1 * s["a"] + 2 * s["b"]) / (s["a"] + s["b"]))
