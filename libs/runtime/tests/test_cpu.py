"""CPUs a process may use, read from cgroup files laid out as v1 and v2 hosts and containers have them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lineloop.runtime.cpu import available_cpus, cgroup_cpu_quota, parse_cfs, parse_cpu_max


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def affinity() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000\n", None), ("100000 100000\n", 1.0), ("150000 100000\n", 1.5), ("50000 100000", 0.5),
     ("200000", 2.0), ("", None), ("0 100000", None)],
)
def test_cpu_max(text, cpus):
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"), [("-1\n", "100000\n", None), ("250000\n", "100000\n", 2.5), ("100000", "0", None)]
)
def test_cfs_quota(quota, period, cpus):
    assert parse_cfs(quota, period) == cpus


def test_v2_container_with_its_own_namespace(tmp_path):
    # A Kubernetes pod with limits.cpu "1": cgroupns, so the path is "/" and the mount is the pod's cgroup.
    write(tmp_path / "proc", "0::/\n")
    write(tmp_path / "cg" / "cpu.max", "100000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") == 1.0
    assert available_cpus(tmp_path / "cg", tmp_path / "proc") == 1


def test_v2_limit_on_a_parent_cgroup_counts(tmp_path):
    # systemd slice limited to 2.5 CPUs, the service's own cgroup unlimited.
    write(tmp_path / "proc", "0::/app.slice/lineloop.service\n")
    write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    write(tmp_path / "cg" / "app.slice" / "cpu.max", "250000 100000\n")
    write(tmp_path / "cg" / "app.slice" / "lineloop.service" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") == 2.5
    # Rounded up (the half CPU is usable), never above the CPUs the process may run on.
    assert available_cpus(tmp_path / "cg", tmp_path / "proc") == min(3, affinity())


def test_v2_host_path_not_mounted_reads_the_mount_root(tmp_path):
    # Docker without a cgroup namespace: /proc/self/cgroup names the host's path, the mount is the container's.
    write(tmp_path / "proc", "0::/system.slice/docker-0123abcd.scope\n")
    write(tmp_path / "cg" / "cpu.max", "50000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") == 0.5
    assert available_cpus(tmp_path / "cg", tmp_path / "proc") == 1


def test_v1_cpu_controller(tmp_path):
    write(tmp_path / "proc", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    write(tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    write(tmp_path / "cg" / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "200000\n")
    write(tmp_path / "cg" / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") == 2.0
    assert available_cpus(tmp_path / "cg", tmp_path / "proc") == min(2, affinity())


def test_v1_split_cpu_mount(tmp_path):
    write(tmp_path / "proc", "3:cpuacct:/\n2:cpu:/\n")
    write(tmp_path / "cg" / "cpu" / "cpu.cfs_quota_us", "100000\n")
    write(tmp_path / "cg" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") == 1.0


@pytest.mark.parametrize(
    "layout",
    [{"proc": "0::/\n", "cg/cpu.max": "max 100000\n"},  # v2, no limit
     {"proc": "2:cpu:/\n", "cg/cpu/cpu.cfs_quota_us": "-1\n", "cg/cpu/cpu.cfs_period_us": "100000\n"},  # v1, no limit
     {"proc": "0::/\n", "cg/cpu.max": "garbage\n"},  # unreadable: no limit rather than a crash
     {}],  # no cgroup files at all (not Linux, or /sys not mounted)
)
def test_no_quota_falls_back_to_the_cpus_the_process_may_run_on(tmp_path, layout):
    for name, text in layout.items():
        write(tmp_path / name, text)
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc") is None
    assert available_cpus(tmp_path / "cg", tmp_path / "proc") == affinity()


def test_this_host():
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
