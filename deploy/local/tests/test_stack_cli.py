"""`lineloop stack up/status/down`: idempotent, and nothing left behind."""

import json

from lineloop.stack.probes import port_open

from .conftest import leftover_sockets, processes_under, run


def test_stack_up_status_down_is_idempotent(cli_env):
    config, env = cli_env
    first = run(env, "stack", "up")
    assert first.returncode == 0, first.stderr
    for server in ("s3", "kafka", "triton"):
        assert f"{server}: ready in" in first.stdout

    status = json.loads(run(env, "stack", "status", "--json").stdout)
    pids = {s["name"]: s["pid"] for s in status["servers"]}
    assert all(s["running"] and s["healthy"] for s in status["servers"]), status

    again = run(env, "stack", "up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 3
    assert {s["name"]: s["pid"] for s in json.loads(run(env, "stack", "status", "--json").stdout)["servers"]} == pids

    down = run(env, "stack", "down")
    assert down.returncode == 0 and "stopped: kafka" in down.stdout
    assert run(env, "stack", "down").stdout.strip() == "nothing was running"
    assert processes_under(config.state_dir) == []
    assert not any(port_open("127.0.0.1", port) for port in config.all_ports().values())
    assert leftover_sockets(config) == []
    after = json.loads(run(env, "stack", "status", "--json").stdout)
    assert not any(s["running"] for s in after["servers"])
