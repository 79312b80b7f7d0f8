"""lineloop.telemetry against real sockets: /metrics over HTTP, JSON logs, gRPC tracing."""

from __future__ import annotations

import io
import os
import json
import logging
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

# Imported before setup_telemetry runs in this process (unless another test module
# set it up earlier): the instruments are the API's proxies until then.
from lineloop.telemetry import (
    capture_spans,
    grpc_server_interceptors,
    instrumented_channel,
    metrics,
    setup_telemetry,
)

SERVICE = "telemetry-test"


@pytest.fixture(scope="module")
def telemetry():
    handle = setup_telemetry(SERVICE, metrics_port=0, metrics_addr="127.0.0.1")
    yield handle
    handle.shutdown()


@pytest.fixture
def spans(telemetry):
    exporter = capture_spans()
    yield exporter
    exporter.shutdown()


def capture_log_lines(handle) -> io.StringIO:
    buffer = io.StringIO()
    handle.log_handler.setStream(buffer)
    return buffer


@pytest.fixture
def log_lines(telemetry):
    """The lines the JSON log handler writes during the test."""
    # Each setup call replaces the root handler, so take this one's.
    handle = setup_telemetry(SERVICE, metrics_port=None)
    yield capture_log_lines(handle)
    handle.log_handler.setStream(sys.stderr)


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(declared) == len(set(declared)), "a metric family is exposed twice"
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def sample_value(families: dict[str, list], sample_name: str, **labels: str) -> float | None:
    for family_samples in families.values():
        for sample in family_samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_counters_and_histogram_are_scraped_with_their_attributes(telemetry):
    topic = f"test.{uuid.uuid4().hex}.v1"
    metrics.events_consumed.add(3, {"topic": topic, "ce_type": "lineloop.v1.FrameCaptured"})
    metrics.events_dead_lettered.add(1, {"topic": topic, "ce_type": "lineloop.v1.FrameCaptured", "reason": "bad_image"})
    metrics.handler_duration.record(0.02, {"topic": topic, "outcome": "ok"})

    families = scrape(telemetry.metrics_port)

    ce_type = "lineloop.v1.FrameCaptured"
    assert sample_value(families, "lineloop_events_consumed_total", topic=topic, ce_type=ce_type) == 3
    assert sample_value(families, "lineloop_events_dead_lettered_total", topic=topic, reason="bad_image") == 1
    assert sample_value(families, "lineloop_handler_duration_seconds_count", topic=topic, outcome="ok") == 1
    # 20 ms lands in the 25 ms bucket, not the 10 ms one: buckets are in seconds.
    assert sample_value(families, "lineloop_handler_duration_seconds_bucket", topic=topic, le="0.01") == 0
    assert sample_value(families, "lineloop_handler_duration_seconds_bucket", topic=topic, le="0.025") == 1
    # The first setup in the process names the resource (providers are global, set once).
    installed = telemetry.tracer_provider.resource.attributes["service.name"]
    assert sample_value(families, "target_info", service_name=installed) == 1


def test_outbox_gauge_reports_the_last_value_set(telemetry):
    service = f"svc-{uuid.uuid4().hex[:8]}"
    metrics.outbox_pending.set(7, {"service": service})
    metrics.outbox_pending.set(2, {"service": service})
    assert sample_value(scrape(telemetry.metrics_port), "lineloop_outbox_pending", service=service) == 2


def test_second_setup_keeps_providers_and_serves_its_own_endpoint(telemetry):
    again = setup_telemetry(SERVICE, metrics_port=0, metrics_addr="127.0.0.1")
    try:
        assert again.tracer_provider is telemetry.tracer_provider
        assert again.meter_provider is telemetry.meter_provider
        assert again.metrics_port != telemetry.metrics_port
        reason = uuid.uuid4().hex
        metrics.rejections.add(1, {"service": SERVICE, "reason": reason})
        # Both endpoints serve the one process-wide registry.
        for port in (telemetry.metrics_port, again.metrics_port):
            assert sample_value(scrape(port), "lineloop_rejections_total", reason=reason) == 1
    finally:
        again.shutdown()
    with pytest.raises(urllib.error.URLError):
        scrape(again.metrics_port)
    assert sample_value(scrape(telemetry.metrics_port), "lineloop_rejections_total", reason=reason) == 1


def test_no_metrics_port_serves_no_endpoint(telemetry):
    handle = setup_telemetry(SERVICE, metrics_port=None)
    assert handle.metrics_port is None
    handle.shutdown()


def test_taken_metrics_port_is_a_clear_error(telemetry):
    with pytest.raises(OSError, match=f"cannot serve /metrics on 127.0.0.1:{telemetry.metrics_port}"):
        setup_telemetry(SERVICE, metrics_port=telemetry.metrics_port, metrics_addr="127.0.0.1")


@pytest.mark.parametrize(("option", "value"), [("log_format", "xml"), ("log_level", "LOUD")])
def test_bad_logging_options_are_refused(telemetry, option, value):
    with pytest.raises(ValueError, match=value):
        setup_telemetry(SERVICE, metrics_port=None, **{option: value})


def test_log_record_in_a_span_is_json_with_that_spans_ids(log_lines):
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span("grade-frame") as span:
        logging.getLogger("lineloop.test.grading").warning("frame %s graded", "f-1", extra={"camera_id": "cam-7"})
    logging.getLogger("lineloop.test.grading").info("outside any span")

    inside, outside = (json.loads(line) for line in log_lines.getvalue().splitlines())
    context = span.get_span_context()
    assert inside["trace_id"] == trace.format_trace_id(context.trace_id)
    assert inside["span_id"] == trace.format_span_id(context.span_id)
    assert inside["service"] == SERVICE
    assert inside["level"] == "WARNING"
    assert inside["logger"] == "lineloop.test.grading"
    assert inside["message"] == "frame f-1 graded"
    assert inside["camera_id"] == "cam-7"
    assert "timestamp" in inside
    assert outside["trace_id"] is None and outside["span_id"] is None


def test_console_format_is_one_readable_line_with_the_trace_id(telemetry):
    handle = setup_telemetry(SERVICE, metrics_port=None, log_format="console")
    buffer = capture_log_lines(handle)
    try:
        with trace.get_tracer(__name__).start_as_current_span("console") as span:
            logging.getLogger("lineloop.test.console").info("hello operator")
    finally:
        handle.log_handler.setStream(sys.stderr)
    line = buffer.getvalue().strip()
    assert "INFO" in line and "lineloop.test.console: hello operator" in line
    assert f"trace_id={trace.format_trace_id(span.get_span_context().trace_id)}" in line


def test_global_propagator_writes_w3c_traceparent(telemetry):
    carrier: dict[str, str] = {}
    with trace.get_tracer(__name__).start_as_current_span("publish") as span:
        propagate.inject(carrier)
    context = span.get_span_context()
    version, trace_id, parent_id, flags = carrier["traceparent"].split("-")
    assert version == "00"
    assert trace_id == trace.format_trace_id(context.trace_id)
    assert parent_id == trace.format_span_id(context.span_id)
    assert int(flags, 16) & 0x01  # sampled


async def start_health_server(interceptors) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=interceptors)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def spans_named(exporter, name: str, kind: SpanKind) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name and s.kind == kind]


CHECK = "/grpc.health.v1.Health/Check"


async def test_grpc_server_span_is_child_of_client_span(spans):
    server, port = await start_health_server(grpc_server_interceptors(trace_health_checks=True))
    try:
        async with instrumented_channel(f"127.0.0.1:{port}") as channel:
            with trace.get_tracer(__name__).start_as_current_span("caller") as caller:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    (client,) = spans_named(spans, CHECK, SpanKind.CLIENT)
    (served,) = spans_named(spans, CHECK, SpanKind.SERVER)
    assert client.parent.span_id == caller.get_span_context().span_id
    assert served.context.trace_id == client.context.trace_id == caller.get_span_context().trace_id
    assert served.parent.span_id == client.context.span_id
    assert served.parent.is_remote


async def test_health_checks_are_not_traced_on_the_server_by_default(spans):
    server, port = await start_health_server(grpc_server_interceptors())
    try:
        async with instrumented_channel(f"127.0.0.1:{port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)

    assert len(spans_named(spans, CHECK, SpanKind.CLIENT)) == 1
    assert spans_named(spans, CHECK, SpanKind.SERVER) == []


def test_instruments_created_after_setup_also_export():
    # A fresh interpreter, so the order is certain: setup first, then the import.
    script = textwrap.dedent(
        """
        import urllib.request
        from lineloop.telemetry import capture_spans, setup_telemetry
        try:
            capture_spans()
        except RuntimeError as exc:
            print("refused:", exc)
        handle = setup_telemetry("ordering", metrics_port=0, metrics_addr="127.0.0.1", log_level="ERROR")
        from lineloop.telemetry import metrics
        metrics.events_published.add(5, {"topic": "order.tested.v1", "ce_type": "x"})
        url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
        print(urllib.request.urlopen(url, timeout=5).read().decode())
        handle.shutdown()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "refused: capture_spans() needs setup_telemetry() first" in result.stdout
    families = {f.name: f.samples for f in text_string_to_metric_families(result.stdout.split("\n", 1)[1])}
    assert sample_value(families, "lineloop_events_published_total", topic="order.tested.v1") == 5


class OtlpTraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_are_exported_over_otlp_when_the_endpoint_is_set():
    receiver = OtlpTraceReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from lineloop.telemetry import setup_telemetry
        handle = setup_telemetry("exporter-test", metrics_port=None, log_level="ERROR")
        with trace.get_tracer("test").start_as_current_span("exported-span"):
            pass
        handle.shutdown()
        """
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    try:
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60, check=True)
    finally:
        server.stop(None)

    resource_spans = [rs for request in receiver.requests for rs in request.resource_spans]
    service_names = {
        attr.value.string_value for rs in resource_spans for attr in rs.resource.attributes if attr.key == "service.name"
    }
    span_names = [span.name for rs in resource_spans for scope in rs.scope_spans for span in scope.spans]
    assert service_names == {"exporter-test"}
    assert span_names == ["exported-span"]
