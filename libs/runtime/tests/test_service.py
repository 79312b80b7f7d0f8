"""A service hosted by lineloop.runtime on the real stack: health, reflection, metrics, clean stop."""

from __future__ import annotations

import asyncio
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lineloop.runtime import Service, ServiceSettings, StackSettings, abort, error_info, service_config
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
