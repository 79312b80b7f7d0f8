"""lineloop telemetry: OpenTelemetry traces, Prometheus metrics, JSON logs, gRPC tracing."""

from lineloop.telemetry.providers import Telemetry, setup_telemetry
from lineloop.telemetry.rpc import grpc_server_interceptors, instrumented_channel
from lineloop.telemetry.testing import capture_spans

__all__ = ["Telemetry", "capture_spans", "grpc_server_interceptors", "instrumented_channel", "setup_telemetry"]
