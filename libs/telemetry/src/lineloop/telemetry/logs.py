"""Structured logs carrying the current trace and span ids."""

from __future__ import annotations

import logging

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("json", "console")

# Lets a later setup call find and replace the handler an earlier one installed.
_HANDLER_NAME = "lineloop.telemetry"


class TraceContextFilter(logging.Filter):
    """Adds `service`, `trace_id` and `span_id` (None outside a span) to each record."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.service = self.service_name
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        else:
            record.trace_id = None
            record.span_id = None
        return True


class ConsoleFormatter(logging.Formatter):
    """One readable line per record, with the trace id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(service)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        trace_id = getattr(record, "trace_id", None)
        return f"{line} [trace_id={trace_id} span_id={record.span_id}]" if trace_id else line


def json_formatter() -> JsonFormatter:
    """JSON with timestamp, level, logger, message; extras and the filter's fields follow."""
    return JsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )


def configure_logging(service_name: str, *, level: str, log_format: str) -> logging.Handler:
    """Replaces lineloop's handler on the root logger and sets the root level.

    Args:
        service_name: Written into every record as `service`.
        level: A logging level name such as "INFO".
        log_format: "json" for machines, "console" for people.

    Returns:
        The handler installed on the root logger (stderr).

    Raises:
        ValueError: Unknown level or format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}")

    handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(TraceContextFilter(service_name))
    handler.setFormatter(json_formatter() if log_format == "json" else ConsoleFormatter())

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    return handler
