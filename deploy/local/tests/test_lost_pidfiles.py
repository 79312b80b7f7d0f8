"""The stack finds the servers it started by the marker in their environment, not only by
pidfile, and `up` names whoever holds a port it needs."""

import json
import subprocess
import sys
import textwrap
import time

import psutil

from lineloop.stack.probes import port_open
from lineloop.stack.process import ManagedProcess, marked_processes, state_lock

from .conftest import LINELOOP, processes_under, run

LISTENER = textwrap.dedent("""
    import socket, sys, time
    sock = socket.socket()
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    sock.listen()
    print("listening", flush=True)
    time.sleep(120)
""")


def _remove_pidfiles(config) -> list[str]:
    removed = sorted(p.name for p in config.run_dir.glob("*.pid"))
    for pidfile in config.run_dir.glob("*.pid"):
        pidfile.unlink()
    return removed


def test_down_stops_servers_whose_pidfiles_are_gone(cli_env):
    config, env = cli_env
    up = run(env, "stack", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    pids = {s["name"]: s["pid"] for s in json.loads(run(env, "stack", "status", "--json").stdout)["servers"]}

    assert _remove_pidfiles(config) == ["kafka.pid", "s3.pid", "triton.pid", "watchdog.pid"]
    status = json.loads(run(env, "stack", "status", "--json").stdout)
    assert {s["name"]: s["pid"] for s in status["servers"] if s["running"]} == pids
    again = run(env, "stack", "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == 3

    _remove_pidfiles(config)
    down = run(env, "stack", "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "stopped: kafka, triton, s3"
    assert marked_processes(run_dir=config.run_dir) == []
    assert processes_under(config.state_dir) == []
    assert not any(port_open("127.0.0.1", port) for port in config.all_ports().values())


def test_stop_without_pidfile_stops_the_process_and_what_it_forked(tmp_path):
    # A service is a ManagedProcess like the servers; this one forks a child, as training's workers do.
    process = ManagedProcess("service-sleeper", tmp_path / "run", tmp_path / "logs" / "sleeper.log")
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"
    handle = process.start([sys.executable, "-c", script], {"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 10
    while len(marked_processes(process.marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {p.pid for p in marked_processes(process.marker)} - {handle.pid}, "the child carries the marker"
    process.pidfile.unlink()

    assert process.running().pid == handle.pid
    process.pidfile.unlink()
    assert process.stop(timeout=5.0) is True
    assert marked_processes(process.marker) == []
    assert process.stop(timeout=5.0) is False


def _listen(port: int, *popen_args, **popen_kwargs) -> subprocess.Popen:
    listener = subprocess.Popen([sys.executable, "-c", LISTENER, str(port), *popen_args],
                                stdout=subprocess.PIPE, text=True, **popen_kwargs)
    assert listener.stdout.readline().strip() == "listening"
    return listener


def test_up_names_the_foreign_process_that_holds_a_port(cli_env):
    config, env = cli_env
    listener = _listen(config.s3_port)
    try:
        up = run(env, "stack", "up")
    finally:
        listener.kill()
        listener.wait()
    assert up.returncode == 1
    message = " ".join(up.stderr.split())
    assert f"s3 {config.s3_port} is held by pid {listener.pid}" in message, up.stderr
    assert f"{sys.executable} -c" in message and f"kill {listener.pid}" in message, up.stderr
    assert processes_under(config.state_dir) == []


def test_up_names_the_other_stack_that_holds_a_port(cli_env, tmp_path):
    config, env = cli_env
    other = ManagedProcess("s3", tmp_path / "other" / "run", tmp_path / "other" / "logs" / "s3.log")
    handle = other.start([sys.executable, "-c", LISTENER, str(config.s3_port)], {"PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", config.s3_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        up = run(env, "stack", "up")
    finally:
        other.stop(timeout=5.0)
    assert not psutil.pid_exists(handle.pid) or handle.status() == psutil.STATUS_ZOMBIE
    assert up.returncode == 1
    message = " ".join(up.stderr.split())
    assert f"pid {handle.pid}" in message, up.stderr
    assert f"`LINELOOP_STATE_DIR={tmp_path / 'other'} lineloop down`" in message, up.stderr


def test_up_waits_while_another_up_or_down_holds_the_state_directory(cli_env):
    # Two `up`s racing on one state directory each started a server; the loser's pidfile hid the winner's.
    config, env = cli_env
    with state_lock(config.run_dir):
        up = subprocess.Popen([LINELOOP, "stack", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        cli = psutil.Process(up.pid)
        lock = str(config.run_dir / "stack.lock")
        deadline = time.monotonic() + 60
        # Until it waits on the lock, or (without one) starts a server, or exits.
        while (time.monotonic() < deadline and up.poll() is None and not port_open("127.0.0.1", config.s3_port)
               and lock not in {f.path for f in cli.open_files()}):
            time.sleep(0.05)
        time.sleep(0.5)
        assert up.poll() is None and marked_processes(run_dir=config.run_dir) == []
        assert not port_open("127.0.0.1", config.s3_port)
    out, err = up.communicate(timeout=120)
    assert up.returncode == 0, out + err
    assert {p.environ()["LINELOOP_STACK_PROCESS"] for p in marked_processes(run_dir=config.run_dir)} >= {
        str(config.run_dir / name) for name in ("s3", "kafka", "triton")}
    down = run(env, "stack", "down")
    assert down.stdout.strip() == "stopped: kafka, triton, s3", down.stdout
    assert processes_under(config.state_dir) == []
