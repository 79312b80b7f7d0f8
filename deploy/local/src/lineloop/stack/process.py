"""Processes the stack starts, found again through pidfiles in the state directory.

A pidfile records the pid, the process's start time and a marker (the state directory)
that must appear in its command line, so a recycled pid or a process someone else started
is never signalled.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the kernel SIGTERMs the child when the thread that forked it dies, so a test
    # session killed with SIGKILL leaves no server behind.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """One long-running server: start detached, find by pidfile, stop gently then firmly."""

    def __init__(self, name: str, run_dir: Path, log_file: Path, marker: str) -> None:
        self.name = name
        self.pidfile = run_dir / f"{name}.pid"
        self.log_file = log_file
        self.marker = marker

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        die_with_parent: bool = False,
    ) -> psutil.Process:
        if self.marker not in " ".join(argv):
            raise ValueError(f"{self.name}: command line must contain the marker {self.marker!r}")
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        handle = psutil.Process(proc.pid)
        self.pidfile.write_text(
            json.dumps({"pid": proc.pid, "start_ticks": _start_ticks(proc.pid), "argv": list(argv)})
        )
        return handle

    def running(self) -> psutil.Process | None:
        """The live process this pidfile names, or None (a stale pidfile is removed)."""
        try:
            record = json.loads(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            proc = psutil.Process(record["pid"])
            same = _start_ticks(proc.pid) == record["start_ticks"]
            ours = self.marker in " ".join(proc.cmdline())
            if same and ours and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, OSError):
            pass
        self.pidfile.unlink(missing_ok=True)
        return None

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL of the whole process group after `timeout` s.

        Returns whether there was a process to stop.
        """
        proc = self.running()
        if proc is None:
            return False
        # The group also holds helpers the server forked (Triton's python-backend stubs).
        group = [proc, *proc.children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs([proc], timeout=timeout)
        if alive:
            _kill_group(proc.pid)
        _, leftovers = psutil.wait_procs(group, timeout=timeout if not alive else 5.0)
        for child in leftovers:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=5.0)
        self.pidfile.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _start_ticks(pid: int) -> int:
    """Start time in clock ticks since boot, from /proc: exact, unlike wall-clock create
    times, which move with the boot-time estimate and would make our own process look foreign."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(check, timeout: float, interval: float = 0.05, proc: psutil.Process | None = None) -> float:
    """Poll `check()` until true; returns the seconds it took.

    Raises TimeoutError, or RuntimeError as soon as `proc` exits.
    """
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if proc is not None and (not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE):
            raise RuntimeError(f"process {proc.pid} exited before it was ready")
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not ready after {timeout:.0f} s")
        time.sleep(interval)
