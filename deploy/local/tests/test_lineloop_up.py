"""`lineloop up/down`: the stack plus the six services, and nothing left behind. The stack runs
with LINELOOP_STACK_AUTH=required here (one boot for both): it issues its own tokens and
requires them. With a known object-store secret and those tokens, no secret may appear in a
log, an event or a command's output."""

import asyncio
import json
import urllib.request
import uuid
from pathlib import Path

import pytest

from lineloop.stack.probes import port_open
from lineloop.stack.services import SERVICE_PORTS

from .conftest import processes_under, run


@pytest.mark.slow  # boots every service (training imports torch)
def test_up_serves_six_services_with_metrics_and_down_leaves_nothing(cli_env):
    config, env = cli_env
    s3_secret = f"s3-secret-{uuid.uuid4().hex}"
    env = {**env, "LINELOOP_STACK_AUTH": "required", "LINELOOP_S3_SECRET_KEY": s3_secret}
    env.pop("LINELOOP_TOKEN", None)
    env.pop("LINELOOP_TOKEN_FILE", None)
    up = run(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    serving = {name for name in SERVICE_PORTS
               if any(line.lstrip("✓✗ ").startswith(f"{name}: SERVING") for line in up.stdout.splitlines())}
    assert serving == set(SERVICE_PORTS), up.stdout
    status = json.loads(run(env, "stack", "status", "--json").stdout)
    assert {row["name"] for row in status["services"] if row["serving"]} == set(SERVICE_PORTS)
    for name in SERVICE_PORTS:  # each serves Prometheus metrics on its own port
        port = env[f"LINELOOP_{name.upper()}_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200 and b"# TYPE" in response.read(), name

    outputs = [up.stdout, up.stderr, *_calls_need_a_token_of_a_role_that_may_make_them(config, env, up.stdout)]
    _no_secret_is_written_anywhere(config, env, s3_secret, outputs)

    # The services are found without their pidfiles too (by the marker in their environment).
    for pidfile in config.run_dir.glob("service-*.pid"):
        pidfile.unlink()
    down = run(env, "down")
    assert down.returncode == 0, down.stderr
    stopped = " ".join(down.stdout.split()).removeprefix("stopped: ").split(", ")
    assert set(stopped) == {*SERVICE_PORTS, "s3", "kafka", "triton"}, down.stdout
    assert processes_under(config.state_dir) == []
    assert not any(port_open("127.0.0.1", port) for port in config.all_ports().values())
    assert not any(row["running"] for row in json.loads(run(env, "stack", "status", "--json").stdout)["services"])


def _calls_need_a_token_of_a_role_that_may_make_them(config, env, up_output: str) -> None:
    tokens = config.state_dir / "auth" / "tokens"
    assert f"export LINELOOP_TOKEN_FILE={tokens / 'admin.jwt'}" in " ".join(up_output.split())
    registry = ["--target", f"127.0.0.1:{env['LINELOOP_REGISTRY_GRPC_PORT']}"]

    anonymous = run(env, "models", "list", "--json", *registry)
    assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr
    assert "set LINELOOP_TOKEN or LINELOOP_TOKEN_FILE" in anonymous.stderr
    admin = run({**env, "LINELOOP_TOKEN_FILE": str(tokens / "admin.jwt")}, "models", "list", "--json", *registry)
    assert admin.returncode == 0, admin.stderr
    assert json.loads(admin.stdout) == []
    # the services' own token (what training and the registry send each other) is accepted for reads
    service = run({**env, "LINELOOP_TOKEN_FILE": str(config.state_dir / "auth" / "service" / "token")},
                  "models", "list", "--json", *registry)
    assert service.returncode == 0, service.stderr
    annotator = run({**env, "LINELOOP_TOKEN_FILE": str(tokens / "annotator.jwt")},
                    "models", "rollback", "apples", *registry)
    assert annotator.returncode == 1 and "PERMISSION_DENIED" in annotator.stderr and "release-manager" in annotator.stderr
    # A token signed by someone else: refused, and the refusal does not repeat it.
    forged = _forged_token(tokens / "admin.jwt")
    refused = run({**env, "LINELOOP_TOKEN": forged}, "models", "list", "--json", *registry)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    assert forged not in refused.stderr + refused.stdout
    return [r.stdout + r.stderr for r in (anonymous, admin, service, annotator, refused)] + [forged]


def _forged_token(real: Path) -> str:
    """The real admin token with its signature replaced: well-formed, wrongly signed."""
    header, payload, _ = real.read_text().strip().split(".")
    return f"{header}.{payload}.{'A' * 86}"


def _no_secret_is_written_anywhere(config, env, s3_secret: str, outputs: list[str]) -> None:
    """Every log the stack and services wrote, every record on every topic and every command's
    output, scanned for the object-store secret, each token and the signing key."""
    auth = config.state_dir / "auth"
    *outputs, forged = outputs
    secrets = {"object-store secret": s3_secret, "forged token": forged}
    for path in [*auth.glob("tokens/*.jwt"), auth / "service" / "token"]:
        secrets[f"token {path.name}"] = path.read_text().strip()
    key_lines = [line for line in (auth / "signing.key").read_text().splitlines() if line and "-----" not in line]
    secrets["signing key"] = max(key_lines, key=len)  # a full line of the private key's base64 body
    logs = {str(p): p.read_text(errors="replace") for p in config.logs_dir.rglob("*") if p.is_file()}
    assert logs, "no logs to scan"
    records = asyncio.run(_every_record(env.get("LINELOOP_KAFKA_BOOTSTRAP", config.kafka_bootstrap)))
    places = {**logs, **{f"command output {i}": out for i, out in enumerate(outputs)},
              **{f"record on {topic}": value for topic, value in records}}
    found = [f"{what} in {where}" for what, secret in secrets.items() for where, text in places.items()
             if secret in text]
    assert found == [], found


async def _every_record(bootstrap: str) -> list[tuple[str, str]]:
    from aiokafka import AIOKafkaConsumer
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        topics = sorted(await consumer.topics())
        consumer.subscribe(topics)
        found, quiet = [], 0
        while quiet < 2:  # until two fetches in a row bring nothing
            batch = await consumer.getmany(timeout_ms=1000)
            quiet = 0 if batch else quiet + 1
            for records in batch.values():
                found += [(r.topic, (r.value or b"").decode("latin-1") + repr(r.headers)) for r in records]
        return found
    finally:
        await consumer.stop()
