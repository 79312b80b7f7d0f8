"""How many CPUs this process may really use: the container's quota, not the host's cores.

`os.cpu_count()` counts the host's cores. A pod limited to 1 CPU on a 64-core node that
sizes a pool from it runs 64 CPU-bound threads on one CPU's time: throttled, and holding
64 working sets in memory at once. The limit is in the cgroup (v2 `cpu.max`,
v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, on the process's own cgroup or one
above it) and in the scheduler affinity (`taskset`, cpusets): the smallest wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """CPUs this process may use: min(affinity, cgroup quota rounded up), at least 1.

    A fractional quota (1.5 CPUs) rounds up: a pool of 2 threads uses the half CPU
    the quota grants; rounding down would leave it idle.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_self_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors; None if unlimited or unknown."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    quotas = []
    for line in lines:
        # "hierarchy-id:controllers:path"; v2 is "0::/path", v1 lists its controllers.
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            quotas += _along(cgroup_root, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            for mount in (cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
                if mount.is_dir():
                    quotas += _along(mount, path, _v1_quota)
                    break
    if not lines:  # no /proc/self/cgroup: a v2 root mount is all there is to read
        quotas += [q for q in (_v2_quota(cgroup_root),) if q is not None]
    return min(quotas) if quotas else None


def _along(mount: Path, path: str, read) -> list[float]:
    """Quotas on `path` and every cgroup above it within `mount`.

    Inside a container with its own cgroup namespace the path is "/" and the mount is
    the container's cgroup; without one, the path is the host's and may not exist under
    the mount, whose root then is the container's cgroup.
    """
    found = []
    directory = mount.joinpath(*[p for p in path.split("/") if p and p != ".."])
    while True:
        if directory.is_dir():
            quota = read(directory)
            if quota is not None:
                found.append(quota)
        if directory == mount:
            return found
        directory = directory.parent


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max`: "max 100000" (unlimited) or "<quota> <period>" in microseconds."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    quota = int(fields[0])
    period = int(fields[1]) if len(fields) > 1 else 100_000
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` (-1: unlimited) over `cpu.cfs_period_us`."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def _v2_quota(directory: Path) -> float | None:
    try:
        return parse_cpu_max((directory / "cpu.max").read_text())
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        return parse_cfs((directory / "cpu.cfs_quota_us").read_text(), (directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
