"""Kafka over TLS: the bus (FastStream and the aiokafka admin), the CLI and the settings.

Tansu 0.6.0, the embedded broker, cannot serve TLS: its `--cert` and `--key` options refuse to
be given together. So a TLS-terminating relay stands in front of a Tansu of this test's own,
which advertises the relay's address: every connection a client makes, bootstrap and the
partition leaders it learns from metadata, goes through TLS with a certificate from a CA made
here. Tansu has no SASL at all: the SASL settings are checked as far as the client options
FastStream derives from them, not against a broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from lineloop.bus import Bus, EventContext, KafkaSecurity
from lineloop.runtime import StackSettings, pki
from lineloop.stack.config import free_ports
from lineloop.stack.servers import tansu_binary
from lineloop.v1 import events_pb2

FAST = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


class TlsRelay:
    """Accepts TLS on `port` and passes the bytes on to a plaintext `upstream` port."""

    def __init__(self, port: int, upstream: int, context: ssl.SSLContext) -> None:
        self.port, self.upstream, self.context = port, upstream, context
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TlsRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context)

    async def _close(self) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """(bootstrap over TLS, the CA that signs it, another CA)."""
    base = tmp_path_factory.mktemp("kafka-tls")
    ca = pki.make_ca("plant CA")
    cert, key = pki.issue(ca, "kafka", server_names=("127.0.0.1",)).write(base, "kafka")
    (base / "ca.crt").write_bytes(ca.cert_pem)
    (base / "other-ca.crt").write_bytes(pki.make_ca("someone else's CA").cert_pem)
    broker_port, relay_port = free_ports(2)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with open(base / "tansu.log", "wb") as log:
        tansu = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{relay_port}", "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        with TlsRelay(relay_port, broker_port, context):
            yield f"127.0.0.1:{relay_port}", base / "ca.crt", base / "other-ca.crt"
    finally:
        tansu.terminate()
        tansu.wait(10)


async def test_events_flow_over_tls_through_the_bus(tls_broker):
    bootstrap, ca_file, _ = tls_broker
    security = KafkaSecurity("SSL", ca_file=ca_file)
    model, seen = f"tls-{uuid.uuid4().hex[:8]}", asyncio.Event()
    consumer = Bus(bootstrap, source="test/tls-consumer", security=security, **FAST)

    @consumer.handler(events_pb2.TrainingRequested, group=f"tls-{model}")
    async def on_training_requested(msg: events_pb2.TrainingRequested, ctx: EventContext) -> None:
        if msg.model_name == model:
            seen.set()

    producer = Bus(bootstrap, source="test/tls-producer", security=security)
    await consumer.start()  # creates the topics through the admin client: over TLS too
    await producer.start()
    try:
        await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="over tls"))
        await asyncio.wait_for(seen.wait(), 60)
    finally:
        await producer.stop()
        await consumer.stop()


@pytest.mark.parametrize("client", ["plaintext", "another CA"])
async def test_a_client_without_the_plants_ca_cannot_connect(tls_broker, client):
    bootstrap, _, other_ca = tls_broker
    security = KafkaSecurity() if client == "plaintext" else KafkaSecurity("SSL", ca_file=other_ca)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **security.client_options())
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()


def test_the_cli_reads_the_dead_letters_over_tls(tls_broker, tmp_path):
    bootstrap, ca_file, _ = tls_broker
    env = {**os.environ, "LINELOOP_KAFKA_BOOTSTRAP": bootstrap, "LINELOOP_KAFKA_SECURITY_PROTOCOL": "SSL",
           "LINELOOP_KAFKA_CA_FILE": str(ca_file)}
    done = subprocess.run([sys.executable, "-m", "lineloop.cli.main", "dlq", "list", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == []  # the broker's DLQs, read over TLS: nothing dead-lettered
    env["LINELOOP_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
    env.pop("LINELOOP_KAFKA_CA_FILE")
    refused = subprocess.run([sys.executable, "-m", "lineloop.cli.main", "dlq", "list", "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 3 and "not reachable" in refused.stderr, refused.stderr[-2000:]
    env.update({"LINELOOP_KAFKA_SECURITY_PROTOCOL": "SSL", "LINELOOP_KAFKA_CA_FILE": str(tmp_path / "missing.crt")})
    misconfigured = subprocess.run([sys.executable, "-m", "lineloop.cli.main", "dlq", "list", "--json"], env=env,
                                   capture_output=True, text=True, timeout=120)
    assert misconfigured.returncode == 2 and "LINELOOP_KAFKA_CA_FILE" in misconfigured.stderr, misconfigured.stderr[-2000:]


def test_sasl_settings_become_the_client_options_of_every_client(monkeypatch, tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_bytes(pki.make_ca("plant CA").cert_pem)
    for key, value in {"LINELOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LINELOOP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
                       "LINELOOP_KAFKA_SASL_USERNAME": "ingest", "LINELOOP_KAFKA_SASL_PASSWORD": "s3cret",
                       "LINELOOP_KAFKA_CA_FILE": str(ca)}.items():
        monkeypatch.setenv(key, value)
    options = StackSettings().kafka_security().client_options()
    assert (options["security_protocol"], options["sasl_mechanism"], options["sasl_plain_username"],
            options["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-256", "ingest", "s3cret")
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED and options["ssl_context"].check_hostname
    assert "s3cret" not in repr(StackSettings())  # the password is a secret in the settings' repr

    plain = KafkaSecurity("SASL_PLAINTEXT", sasl_mechanism="PLAIN", username="gw", password="pw").client_options()
    assert (plain["security_protocol"], plain["sasl_mechanism"], plain["ssl_context"]) == ("SASL_PLAINTEXT", "PLAIN", None)


@pytest.mark.parametrize(("settings", "complaint"), [
    ({"protocol": "SASL_SSL"}, "needs LINELOOP_KAFKA_SASL_USERNAME and LINELOOP_KAFKA_SASL_PASSWORD"),
    ({"protocol": "PLAINTEXT", "ca_file": Path("/etc/hostname")}, "not SSL or SASL_SSL"),
    ({"protocol": "SSL", "ca_file": Path("/nonexistent/ca.crt")}, "is not a readable file"),
    ({"protocol": "SSL", "cert_file": Path("/etc/hostname")}, "go together"),
    ({"protocol": "TLS"}, "is not one of"),
])
def test_settings_that_do_not_add_up_stop_the_client_naming_the_variable(settings, complaint):
    with pytest.raises(ValueError, match=complaint):
        KafkaSecurity(**settings)
