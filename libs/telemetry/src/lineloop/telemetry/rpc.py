"""gRPC (asyncio) interceptors that carry W3C trace context in call metadata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters


def grpc_server_interceptors(*, trace_health_checks: bool = False) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors for `grpc.aio.server(interceptors=...)`: one server span per call.

    Args:
        trace_health_checks: Also trace `grpc.health.v1.Health` calls. Off by
            default because Kubernetes probes would flood the traces.
    """
    filter_ = None if trace_health_checks else filters.negate(filters.health_check())
    return [aio_server_interceptor(filter_=filter_)]


def instrumented_channel(target: str, *, options: Sequence[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    """An insecure `grpc.aio` channel whose calls open client spans and send `traceparent`."""
    return grpc.aio.insecure_channel(target, options=options, interceptors=aio_client_interceptors())
