"""CPU threads: torch gets as many as this process may use (affinity, cgroup quota)."""

import os

import pytest
import torch

from marft.runtime import cgroup_cpu_quota, configure_threads, usable_cpus


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


def test_the_cli_asks_openmp_for_passive_waiting_unless_the_user_chose(tmp_path):
    import subprocess
    import sys

    code = (
        "import os, sys; from marft.runtime import passive_openmp_by_default as p; "
        "print(p(), os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
    }
    run = lambda e: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True
    ).stdout.split()
    assert run(env) == ["True", "PASSIVE"]
    assert run({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == ["False", "ACTIVE"]
    assert run({**env, "GOMP_SPINCOUNT": "50"}) == ["False", "None"]
    from marft.runtime import passive_openmp_by_default

    assert passive_openmp_by_default() is False  # torch is loaded here: too late to change


def test_the_start_up_line_says_the_thread_count(tmp_path, capsys):
    from marft.trainer import train
    from tests.conftest import small_config

    cfg = small_config("run.iterations=1", "run.progress=true", "run.checkpoint_every=0")
    train(cfg, tmp_path / "run")
    out = capsys.readouterr()
    assert f"on cpu with {usable_cpus()} CPU threads" in out.out + out.err
