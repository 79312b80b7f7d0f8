"""Hosting one lineloop service: what it does is wired in its main.py, how it runs is here.

Start order: telemetry -> database schemas -> buckets -> gRPC (health
NOT_SERVING) -> bus (topics, producer, outbox relay; consumers join their groups in the
background) -> the service's own start hooks -> health SERVING. SIGTERM/SIGINT stop the inputs first: NOT_SERVING,
so load balancers drain, then gRPC (with grace) and the consumers (a record in
flight is cancelled and redelivered), and only then the hooks, which may close
what handlers use (executors, clients), then the database.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import timedelta
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import MetaData

from lineloop.bus import Bus, outbox
from lineloop.contracts.topics import INBOX_RETENTION_S
from lineloop.runtime import auth
from lineloop.runtime.periodic import Periodic
from lineloop.runtime.settings import BUCKETS, SecuritySettings, ServiceSettings
from lineloop.storage.sql import Database, utcnow
from lineloop.telemetry import Telemetry, grpc_server_interceptors, setup_telemetry

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]
GRPC_GRACE_S = 5.0
# How often each replica deletes inbox rows older than the topics' retention (they would grow forever).
INBOX_PRUNE_EVERY_S = 3600.0


class Service:
    """One service process: database, bus, object store, gRPC server, lifecycle."""

    def __init__(self, name: str, settings: ServiceSettings) -> None:
        self.name = name
        self.settings = settings
        stack = settings.stack
        self.db = Database(settings.sql_url)
        self.bus = Bus(
            stack.kafka_bootstrap,
            security=stack.kafka_security(),
            source=f"lineloop/{name}",
            db=self.db,
            partitions=stack.topic_partitions,
            replication_factor=stack.topic_replication_factor,
            min_insync_replicas=stack.topic_min_insync_replicas,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            max_deliveries=settings.bus_max_deliveries,
        )
        self.objects = stack.object_store()
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._migrations: list[tuple[str, int, MetaData]] = []
        self._servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]] = []
        self._start_hooks: list[Hook] = []
        self._stop_hooks: list[Hook] = []
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._telemetry: Telemetry | None = None
        self._inbox_pruner = Periodic(f"{name}-inbox-prune", self.forget_finished_events, INBOX_PRUNE_EVERY_S)

    # ---- wiring -------------------------------------------------------------

    def migrate(self, component: str, version: int, metadata: MetaData) -> None:
        """Tables of `metadata`, created (and versioned as `component`) at start."""
        self._migrations.append((component, version, metadata))

    def add_grpc(self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any) -> None:
        """Register a servicer, e.g. `add_grpc(add_IngestServiceServicer_to_server, IngestApi(...))`."""
        full_name = _service_full_name(add_to_server)
        self._servicers.append((add_to_server, servicer, full_name))

    def on_start(self, hook: Hook) -> Hook:
        self._start_hooks.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        self._stop_hooks.append(hook)
        return hook

    # ---- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        started = time.perf_counter()
        s = self.settings
        self._telemetry = setup_telemetry(
            self.name, metrics_port=s.metrics_port, metrics_addr=s.bind_host,
            log_level=s.stack.log_level, log_format=s.stack.log_format,
        )
        self.metrics_port = self._telemetry.metrics_port
        for component, version, metadata in self._migrations:
            self.db.migrate(component, version, metadata)
        await self._until_ready("object store", lambda: self.objects.aio.ensure_buckets(BUCKETS))

        self._server = grpc_server(self.name, s.security)
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        for add_to_server, servicer, full_name in self._servicers:
            add_to_server(servicer, self._server)
            names.append(full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(names, self._server)
        self.grpc_port = add_grpc_port(self._server, f"{s.bind_host}:{s.grpc_port}", s.security)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()

        # The broker must answer (fail closed: NOT_SERVING while it does not); the consumers then
        # join their groups in the background, so health does not wait out the group join
        # (seconds on any broker); lag, not health, says how far behind they are.
        await self._until_ready("kafka", lambda: self.bus.start(join=False))
        await self._inbox_pruner.start()
        for hook in self._start_hooks:
            await hook()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "%s serving", self.name,
            extra={"grpc_port": self.grpc_port, "metrics_port": self.metrics_port,
                   "database": self.db.safe_url, "startup_s": round(time.perf_counter() - started, 3)},
        )

    async def stop(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(GRPC_GRACE_S)
        await self._inbox_pruner.stop()
        # Before the hooks: a handler retrying against a closed executor would dead-letter a good event.
        await self.bus.stop()
        for hook in reversed(self._stop_hooks):
            try:
                await hook()
            except Exception:
                log.exception("stop hook %s failed", getattr(hook, "__name__", hook))
        if self._telemetry is not None:
            self._telemetry.shutdown()
        self.db.dispose()
        log.info("%s stopped", self.name)

    async def forget_finished_events(self) -> int:
        """Inbox and dead-letter rows past the topics' retention, deleted in batches; how many."""
        older_than = utcnow() - timedelta(seconds=INBOX_RETENTION_S)
        total = 0
        while True:
            async with self.db.write() as s:
                deleted = outbox.forget_finished(s, older_than=older_than)
            total += deleted
            if deleted == 0:
                break
        if total:
            log.info("forgot %d inbox rows older than %s (past the topics' retention)", total, older_than)
        return total

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Service]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    def run(self) -> None:
        """Run until SIGTERM or SIGINT (the process entry point)."""
        asyncio.run(self._serve_until_signalled())

    async def _serve_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with self.running():
            await stop.wait()
            log.info("%s: signal received, stopping", self.name)

    async def _set_health(self, status: int) -> None:
        await self._health.set("", status)
        for _, _, full_name in self._servicers:
            await self._health.set(full_name, status)

    async def _until_ready(self, what: str, attempt: Callable[[], Awaitable[Any]]) -> None:
        """Retry a dependency at start-up: in compose/k8s it may come up after us."""
        deadline = time.monotonic() + self.settings.startup_timeout_s
        delay = 0.5
        while True:
            try:
                await attempt()
                return
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise RuntimeError(f"{self.name}: {what} not reachable after {self.settings.startup_timeout_s}s: {exc}") from exc
                log.warning("%s: waiting for %s: %s", self.name, what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def grpc_server(name: str, security: SecuritySettings) -> grpc.aio.Server:
    """A gRPC server with tracing and, when `security.auth_mode` is `required`, authentication and roles."""
    return grpc.aio.server(interceptors=[*grpc_server_interceptors(), *auth.interceptors(name, security)])


def add_grpc_port(server: grpc.aio.Server, address: str, security: SecuritySettings) -> int:
    """Listen on `address`: TLS (mTLS with a client CA) when configured, else plaintext; returns the port."""
    credentials = auth.server_credentials(security)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


def _service_full_name(add_to_server: Callable) -> str:
    """'lineloop.v1.IngestService' from `add_IngestServiceServicer_to_server`'s module descriptor."""
    module = __import__(add_to_server.__module__.replace("_grpc", ""), fromlist=["DESCRIPTOR"])
    short = add_to_server.__name__.removeprefix("add_").removesuffix("Servicer_to_server")
    return module.DESCRIPTOR.services_by_name[short].full_name
