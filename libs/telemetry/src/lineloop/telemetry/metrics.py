"""The standard lineloop instruments, created once on the global meter.

The OpenTelemetry API hands out proxy instruments until a MeterProvider is set,
and re-points them when `setup_telemetry` sets one, so importing this module
before or after setup both work.
"""

from __future__ import annotations

from opentelemetry import metrics

_meter = metrics.get_meter("lineloop")

# Handler latencies run from sub-millisecond (dedupe hit) to tens of seconds
# (a training request), so the default millisecond-oriented buckets do not fit.
_DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

events_consumed = _meter.create_counter(
    "lineloop.events.consumed",
    unit="{event}",
    description="Events taken from the bus by a handler. Attributes: topic, ce_type.",
)
events_published = _meter.create_counter(
    "lineloop.events.published",
    unit="{event}",
    description="Events written to the bus. Attributes: topic, ce_type.",
)
events_dead_lettered = _meter.create_counter(
    "lineloop.events.dead_lettered",
    unit="{event}",
    description="Events sent to <topic>.dlq. Attributes: topic, ce_type, reason.",
)
handler_retries = _meter.create_counter(
    "lineloop.handler.retries",
    unit="{retry}",
    description="Handler attempts that will be retried. Attributes: topic, ce_type, group, "
                "reason (unavailable: a dependency is down, retried until it answers; error: counts toward the DLQ).",
)
handler_duration = _meter.create_histogram(
    "lineloop.handler.duration",
    unit="s",
    description="Time spent handling one event. Attributes: topic, outcome.",
    explicit_bucket_boundaries_advisory=_DURATION_BUCKETS_S,
)
rejections = _meter.create_counter(
    "lineloop.rejections",
    unit="{rejection}",
    description="Bad input refused (gRPC error or dead-lettered event). Attributes: service, reason.",
)
rpc_auth_refused = _meter.create_counter(
    "lineloop.rpc.auth_refused",
    unit="{call}",
    description="gRPC calls refused by authentication or authorisation. Attributes: service, method, "
                "outcome (unauthenticated, permission_denied), reason (TOKEN_EXPIRED, ROLE_NOT_ALLOWED, ...).",
)
# A gauge set by the outbox relay after each poll: the count comes from the
# service's database, so it stays right across restarts and replicas.
outbox_pending = _meter.create_gauge(
    "lineloop.outbox.pending",
    unit="{event}",
    description="Outbox rows not yet relayed to the bus. Attributes: service.",
)
batches_redelivered = _meter.create_counter(
    "lineloop.bus.batches_redelivered",
    unit="{batch}",
    description="Fetched batches not finished (e.g. the DLQ write failed): rewound, nothing committed past them, "
                "redelivered after a backoff. Attributes: topic, group, error.",
)
batches_careful = _meter.create_counter(
    "lineloop.bus.batches_careful",
    unit="{batch}",
    description="Batches whose previous delivery died unfinished (OOM-kill, crash), handled one record at a time "
                "toward the poison bound. Attributes: topic, group.",
)
dlq_replayed = _meter.create_counter(
    "lineloop.dlq.replayed",
    unit="{event}",
    description="Records replayed from a DLQ (`lineloop dlq replay`) as the consumer took them. Attributes: topic, "
                "group, outcome (applied, already_applied, dead_lettered, ...).",
)
