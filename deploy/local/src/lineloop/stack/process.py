"""Processes the stack starts, found again through a marker in their environment.

Every process the stack starts carries `LINELOOP_STACK_PROCESS=<state dir>/run/<name>` in its
environment (and its children inherit it), so it is found, and stopped, by scanning the
processes even when its pidfile is gone: a `down` interrupted half-way, two `up`s racing on
one state directory, a pidfile deleted by hand. The pidfile (pid + start time) is only the
quick way there. A recycled pid or a process someone else started never carries the marker,
so it is never signalled.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import fcntl
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1
MARKER_ENV = "LINELOOP_STACK_PROCESS"


def marker_of(run_dir: Path, name: str) -> str:
    """The marker of process `name` of the stack whose run directory is `run_dir`."""
    return str(Path(run_dir).resolve() / name)


def marked_processes(marker: str | None = None, run_dir: Path | None = None) -> list[psutil.Process]:
    """Live processes whose environment carries `marker` exactly, or any marker under `run_dir`.

    Only processes of this user are readable (/proc/<pid>/environ); others cannot be ours.
    """
    prefix = None if run_dir is None else str(Path(run_dir).resolve()) + os.sep
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            value = proc.environ().get(MARKER_ENV)
            if value is None or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if value == marker or (prefix is not None and value.startswith(prefix)):
            found.append(proc)
    return found


def _marker_in(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(MARKER_ENV)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None


def _roots(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes whose parent is not in `procs`: the servers, not what they forked."""
    pids = {p.pid for p in procs}
    roots = []
    for proc in procs:
        try:
            if proc.ppid() not in pids:
                roots.append(proc)
        except psutil.NoSuchProcess:
            continue
    return roots


def port_holders(port: int) -> str:
    """Who listens on TCP `port`, and how to stop it; empty when nobody does (any more)."""
    try:
        listeners = [c for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    except psutil.AccessDenied:
        listeners = []
    described = []
    for pid in sorted({c.pid for c in listeners if c.pid is not None}):
        try:
            proc = psutil.Process(pid)
            command = shlex.join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if len(command) > 300:
            command = command[:300] + "…"
        marker = _marker_in(proc)
        if marker is not None:
            state_dir = Path(marker).parent.parent
            how = f"it belongs to the lineloop stack in {state_dir}: `LINELOOP_STATE_DIR={state_dir} lineloop down`"
        else:
            how = f"stop it with `kill {pid}`"
        described.append(f"pid {pid} ({command}); {how}")
    if not described and listeners:
        # Sockets of another user's process show no pid to us.
        return f"a process this user cannot see (as root: `ss -ltnp 'sport = :{port}'`)"
    return "; ".join(described)


@contextmanager
def state_lock(run_dir: Path) -> Iterator[None]:
    """One `up` or `down` at a time per state directory: two racing `up`s would each start a
    server and the loser's pidfile would hide the winner's process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "stack.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _die_with_parent() -> None:
    # Linux: the kernel SIGTERMs the child when the thread that forked it dies, so a test
    # session killed with SIGKILL leaves no server behind.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """One long-running server: start detached, find by pidfile or marker, stop gently then firmly."""

    def __init__(self, name: str, run_dir: Path, log_file: Path) -> None:
        self.name = name
        self.pidfile = run_dir / f"{name}.pid"
        self.log_file = log_file
        self.marker = marker_of(run_dir, name)

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        die_with_parent: bool = False,
    ) -> psutil.Process:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                env={**env, MARKER_ENV: self.marker},
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
        """The live process: the one the pidfile names, else one found by its marker
        (the pidfile is then written again); None when there is none."""
        recorded = self._recorded()
        if recorded is not None:
            return recorded
        self.pidfile.unlink(missing_ok=True)
        roots = _roots(marked_processes(self.marker))
        if not roots:
            return None
        proc = roots[0]
        try:
            self.pidfile.write_text(json.dumps(
                {"pid": proc.pid, "start_ticks": _start_ticks(proc.pid), "argv": proc.cmdline()}
            ))
        except (psutil.NoSuchProcess, OSError):
            pass
        return proc

    def _recorded(self) -> psutil.Process | None:
        try:
            record = json.loads(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            proc = psutil.Process(record["pid"])
            same = _start_ticks(proc.pid) == record["start_ticks"]
            if same and _marker_in(proc) == self.marker and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, OSError):
            pass
        return None

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL of the whole process group after `timeout` s.

        Every process carrying the marker is stopped, not only the pidfile's: a second copy
        started behind a lost pidfile, and what the server forked (Triton's python-backend
        stubs). Returns whether there was a process to stop.
        """
        marked = marked_processes(self.marker)
        recorded = self._recorded()
        if recorded is not None and recorded.pid not in {p.pid for p in marked}:
            marked.append(recorded)
        if not marked:
            self.pidfile.unlink(missing_ok=True)
            return False
        group = {p.pid: p for p in marked}
        for proc in marked:
            try:
                group.update((c.pid, c) for c in proc.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        roots = _roots(marked)
        for proc in roots:
            try:
                proc.send_signal(signal.SIGTERM)
                # A stopped process (SIGSTOP, a debugger) only acts on SIGTERM once continued; as
                # systemd does, continue it so it shuts down now rather than at the SIGKILL.
                proc.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(roots, timeout=timeout)
        for proc in alive:
            _kill_group(proc.pid)
        _, leftovers = psutil.wait_procs(list(group.values()), timeout=timeout if not alive else 5.0)
        # Whatever is left, and anything forked while the server shut down.
        leftovers += [p for p in marked_processes(self.marker) if p.pid not in {q.pid for q in leftovers}]
        for proc in leftovers:
            try:
                proc.kill()
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


def _kill_group(pid: int) -> None:
    """SIGKILL the process group the server leads (started with its own session)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
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
