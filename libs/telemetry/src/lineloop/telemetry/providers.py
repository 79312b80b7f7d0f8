"""Process-wide OpenTelemetry setup: traces, Prometheus metrics, logs."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import start_http_server

from lineloop.telemetry.logs import configure_logging

_log = logging.getLogger(__name__)

# OpenTelemetry lets a process set its global providers only once, so the first
# setup creates them and later calls (tests, several services in one process)
# reuse them. The OpenTelemetry API's own lock is not exposed.
_lock = threading.Lock()


@dataclass
class Telemetry:
    """What `setup_telemetry` started; `shutdown()` flushes and stops the endpoint.

    Attributes:
        service_name: The name given to `setup_telemetry`.
        tracer_provider: The process-wide SDK tracer provider.
        meter_provider: The process-wide SDK meter provider.
        metrics_port: The bound port of the `/metrics` endpoint, None without one.
        log_handler: The handler installed on the root logger.
    """

    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    metrics_port: int | None
    log_handler: logging.Handler
    _metrics_server: WSGIServer | None = field(default=None, repr=False)
    _metrics_thread: threading.Thread | None = field(default=None, repr=False)

    def shutdown(self) -> None:
        """Flushes pending spans and stops the `/metrics` endpoint.

        The process-wide providers stay installed (they cannot be replaced), and
        they shut down themselves at interpreter exit. Metrics are not flushed:
        Prometheus pulls them, and a flush would queue a second copy of every
        series for the next scrape. Safe to call twice.
        """
        self.tracer_provider.force_flush()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_thread.join()
            self._metrics_server = None
            self._metrics_thread = None


def setup_telemetry(
    service_name: str,
    *,
    metrics_port: int | None,
    metrics_addr: str = "0.0.0.0",
    log_level: str = "INFO",
    log_format: str = "json",
) -> Telemetry:
    """Turns on tracing, Prometheus metrics and structured logs for a service.

    Traces go to OTLP (gRPC) only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; the
    global propagator stays the SDK default (W3C TraceContext + Baggage), which
    the bus and the gRPC interceptors use. Safe to call more than once: the first
    call's tracer and meter providers (and so its resource) are kept, logging is
    reconfigured, and each call with a port serves its own `/metrics` endpoint.

    Args:
        service_name: `service.name` of the resource and `service` of each log record.
        metrics_port: Port for the Prometheus `/metrics` endpoint; 0 picks a free
            one (see `Telemetry.metrics_port`); None serves none.
        metrics_addr: Address the endpoint binds to.
        log_level: Root logger level name.
        log_format: "json" (one object per line) or "console".

    Returns:
        The handle to shut the endpoint down with.

    Raises:
        ValueError: Unknown log level or format.
        OSError: The metrics port cannot be bound.
    """
    log_handler = configure_logging(service_name, level=log_level, log_format=log_format)
    with _lock:
        tracer_provider = _install_tracer_provider(service_name)
        meter_provider = _install_meter_provider(tracer_provider.resource)

    server = thread = None
    bound_port = None
    if metrics_port is not None:
        try:
            server, thread = start_http_server(metrics_port, addr=metrics_addr)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve /metrics on {metrics_addr}:{metrics_port}: {exc.strerror}") from exc
        bound_port = server.server_port
        _log.info("metrics endpoint listening", extra={"metrics_addr": metrics_addr, "metrics_port": bound_port})
    return Telemetry(service_name, tracer_provider, meter_provider, bound_port, log_handler, server, thread)


def _install_tracer_provider(service_name: str) -> TracerProvider:
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        installed_name = current.resource.attributes.get(SERVICE_NAME)
        if installed_name != service_name:
            _log.warning(
                "tracer provider already set up; spans keep service.name %r, not %r", installed_name, service_name
            )
        return current
    resource = Resource.create({SERVICE_NAME: service_name, SERVICE_INSTANCE_ID: str(uuid.uuid4())})
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        # Imported here: the gRPC exporter pulls in protobuf stubs nobody needs otherwise.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def _install_meter_provider(resource: Resource) -> MeterProvider:
    current = metrics.get_meter_provider()
    if isinstance(current, MeterProvider):
        return current
    # The reader registers with prometheus_client's default registry, which every
    # /metrics endpoint serves (along with process and Python runtime metrics).
    provider = MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
    metrics.set_meter_provider(provider)
    return provider
