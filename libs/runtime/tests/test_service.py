"""A service hosted by lineloop.runtime on the real stack: health, reflection, metrics, clean stop."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from datetime import timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import select

from lineloop.bus import outbox
from lineloop.contracts.topics import INBOX_RETENTION_S

from lineloop.runtime import Service, ServiceSettings, StackSettings, abort, error_info, service_config
from lineloop.storage.sql import utcnow
from lineloop.v1 import ingest_pb2, ingest_pb2_grpc


class DemoSettings(ServiceSettings):
    service_name = "demo"
    model_config = service_config("demo")


class RefusingIngest(ingest_pb2_grpc.IngestServiceServicer):
    async def GetFrame(self, request, context):
        await abort(context, grpc.StatusCode.NOT_FOUND, "FRAME_NOT_FOUND", f"no frame {request.frame_id!r}",
                    service="demo", frame_id=request.frame_id)


async def healthcheck(port: int) -> tuple[int, str]:
    """The Docker/compose health check, run as a process (the service shares this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lineloop.runtime.healthcheck", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode().strip()


def settings_for(stack, tmp_path) -> DemoSettings:
    return DemoSettings(
        database_url=f"sqlite:///{tmp_path / 'demo.db'}",
        stack=StackSettings(
            kafka_bootstrap=stack.kafka_bootstrap, s3_endpoint=stack.s3_endpoint,
            s3_access_key=stack.s3_access_key, s3_secret_key=stack.s3_secret_key, log_format="console",
        ),
    )


async def test_service_serves_health_reflection_metrics_and_error_details(stack, tmp_path):
    service = Service("demo", settings_for(stack, tmp_path))
    service.add_grpc(ingest_pb2_grpc.add_IngestServiceServicer_to_server, RefusingIngest())
    async with service.running():
        port = service.grpc_port
        code, out = await healthcheck(port)
        assert (code, out) == (0, "SERVING")

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="lineloop.v1.IngestService"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

            refl = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name async for r in responses for s in r.list_services_response.service}
            assert {"lineloop.v1.IngestService", "grpc.health.v1.Health"} <= names

            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            try:
                await stub.GetFrame(ingest_pb2.GetFrameRequest(frame_id="nope"))
                raise AssertionError("GetFrame should have failed")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
                info = error_info(err)
                assert info.reason == "FRAME_NOT_FOUND" and info.metadata["frame_id"] == "nope"

        body = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).read().decode()
        counted = [line for line in body.splitlines() if line.startswith("lineloop_rejections_total{")
                   and 'reason="FRAME_NOT_FOUND"' in line and 'service="demo"' in line]
        assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1
    # stopped: the port no longer answers
    code, _ = await healthcheck(port)
    assert code == 1


async def test_inbox_rows_past_the_topics_retention_are_forgotten_by_replicas_side_by_side(database_url, tmp_path):
    """The inbox would grow with every event forever. Rows older than the topics' retention (the
    record can no longer be delivered again) go; younger ones stay, or a redelivery would apply
    twice. Two replicas pruning at once on PostgreSQL both finish (SKIP LOCKED) and together
    delete each row once."""
    settings = DemoSettings(database_url=database_url, stack=StackSettings(state_dir=tmp_path))
    replicas = [Service("demo", settings), Service("demo", settings)]
    db = replicas[0].db
    outbox.migrate(db)
    old = utcnow() - timedelta(seconds=INBOX_RETENTION_S + 60)
    young = utcnow() - timedelta(seconds=INBOX_RETENTION_S - 3600)
    with db.transaction() as s:
        s.execute(outbox.inbox.insert(), [
            dict(consumer=f"g{i % 2}", ce_id=f"old-{i}", topic="t", applied_at=old) for i in range(7000)
        ] + [dict(consumer="g0", ce_id="young", topic="t", applied_at=young)])
        s.execute(outbox.dead_lettered.insert(), [
            dict(consumer="g0", ce_id=f"refused-{when}", topic="t", partition=0, offset=n, reason="schema",
                 dead_lettered_at=at) for n, (when, at) in enumerate((("old", old), ("young", young)))
        ])
    deleted = await asyncio.gather(*(r.forget_finished_events() for r in replicas))
    assert sum(deleted) == 7001  # each row once, across both replicas (batches of 5,000)
    with db.session() as s:
        assert [r.ce_id for r in s.execute(select(outbox.inbox.c.ce_id))] == ["young"]
        assert [r.ce_id for r in s.execute(select(outbox.dead_lettered.c.ce_id))] == ["refused-young"]
    for r in replicas:
        r.db.dispose()
