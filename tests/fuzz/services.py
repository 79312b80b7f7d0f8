"""The six services as the fuzz tests use them: built by their own main.build(), on the
session's embedded stack, each with its own SQLite database.

`hosted()` runs what a fuzz case reaches: the schemas (and the bus's inbox/outbox), the
buckets and the gRPC servicers on a real grpc.aio server on a free port. It starts no
consumers and no workers: handlers are called directly, the way the bus calls them
(`deliver`), and a fuzzed request must not start a training run or a build.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from lineloop.bus import EventContext, Reject
from lineloop.bus import outbox
from lineloop.bus.cloudevents import decode
from lineloop.bus.errors import is_unavailable
from lineloop.runtime import Service, StackSettings
from lineloop.runtime.settings import BUCKETS
from tests.fuzz.strategies import good_headers

SERVICES = ("ingest", "labeling", "training", "compiler", "registry", "monitor")


def stack_settings(stack) -> StackSettings:
    return StackSettings(
        kafka_bootstrap=stack.kafka_bootstrap, s3_endpoint=stack.s3_endpoint, s3_access_key=stack.s3_access_key,
        s3_secret_key=stack.s3_secret_key, triton_grpc=stack.triton_grpc, triton_http=stack.triton_http,
        state_dir=stack.state_dir, log_format="console",
    )


def build(name: str, stack, tmp: Path) -> Service:
    common = {
        "grpc_port": 0, "metrics_port": None, "database_url": f"sqlite:///{tmp / f'{name}.db'}",
        "consumer_group": f"fuzz-{name}-{uuid.uuid4().hex[:8]}", "stack": stack_settings(stack),
    }
    if name == "ingest":
        from lineloop.ingest.main import build as build_ingest
        from lineloop.ingest.settings import IngestSettings
        return build_ingest(IngestSettings(**common))
    if name == "labeling":
        from lineloop.labeling.main import build as build_labeling
        from lineloop.labeling.settings import LabelingSettings
        return build_labeling(LabelingSettings(**common))
    if name == "training":
        from lineloop.training.main import build as build_training
        from lineloop.training.settings import TrainingSettings
        return build_training(TrainingSettings(**common, cache_dir=tmp / "training-cache", registry_grpc=""))
    if name == "compiler":
        from lineloop.compiler.main import build_service
        from lineloop.compiler.settings import CompilerSettings
        return build_service(CompilerSettings(**common, compile_wait_s=0.2))
    if name == "registry":
        from lineloop.registry.deployer import NoDeployment
        from lineloop.registry.main import build as build_registry
        from lineloop.registry.settings import RegistrySettings
        return build_registry(RegistrySettings(**common, cache_dir=tmp / "registry-cache", monitor_grpc=""),
                              deployer=NoDeployment())
    if name == "monitor":
        from lineloop.monitor.main import build as build_monitor
        from lineloop.monitor.settings import MonitorSettings
        return build_monitor(MonitorSettings(**common, http_port=None))  # no dashboard: not what is fuzzed
    raise ValueError(name)


@dataclass
class Hosted:
    service: Service
    channel: grpc.aio.Channel
    offset: int = 0

    @property
    def registrations(self) -> dict[str, object]:
        return {reg.et.topic: reg for reg in self.service.bus._registrations}

    async def deliver(self, topic: str, msg) -> str:
        """Apply `msg` as the bus applies a record: decode, then the handler in one transaction.

        Returns "applied" or "rejected:<reason>". An exception the bus would retry
        forever as an outage (`is_unavailable`) fails with that said: a malformed event
        must never look like an outage, or it blocks its partition.
        """
        reg = self.registrations[topic]
        self.offset += 1
        headers = {**good_headers(reg.et.ce_type), "ce_id": str(uuid.uuid4())}
        try:
            msg, env = decode(reg.et, msg.SerializeToString(), headers)  # what the bus refuses before any handler
        except Reject as rej:
            return f"rejected:{rej.reason}"
        ctx = EventContext(env, topic, 0, self.offset, self.service.bus.source)
        try:
            async with self.service.db.write() as session:
                ctx.session = session
                await reg.fn(msg, ctx)
        except Reject as rej:
            assert rej.reason and rej.detail, f"Reject without reason or detail: {rej!r}"
            return f"rejected:{rej.reason}"
        except Exception as exc:
            if is_unavailable(exc):
                raise AssertionError(f"a malformed event reads as an outage (retried forever): {exc!r}") from exc
            raise
        return "applied"


@asynccontextmanager
async def hosted(name: str, stack, tmp: Path) -> AsyncIterator[Hosted]:
    service = build(name, stack, tmp)
    outbox.migrate(service.db)
    for component, version, metadata in service._migrations:
        service.db.migrate(component, version, metadata)
    await service.objects.aio.ensure_buckets(BUCKETS)
    server = grpc.aio.server()
    for add_to_server, servicer, _ in service._servicers:
        add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Hosted(service, channel)
    finally:
        await server.stop(1)
        for hook in reversed(service._stop_hooks):
            try:
                await hook()
            except Exception:  # a worker that never started may not stop cleanly; nothing to clean
                pass
        service.db.dispose()
