"""Helpers for tests that assert on spans."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def capture_spans() -> InMemorySpanExporter:
    """Records every span ended from now on in memory.

    Call `exporter.shutdown()` when done: a processor cannot be removed from a
    tracer provider, but a shut-down in-memory exporter stops keeping spans.

    Raises:
        RuntimeError: `setup_telemetry` has not installed the SDK tracer provider.
    """
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        raise RuntimeError("capture_spans() needs setup_telemetry() first: no SDK tracer provider is installed")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
