"""Monitor settings (env prefix LINELOOP_MONITOR_)."""

from __future__ import annotations

from pydantic import Field, field_validator

from lineloop.contracts.catalogue import service
from lineloop.runtime import ServiceSettings, service_config

CATALOGUE_ENTRY = service("monitor")


class MonitorSettings(ServiceSettings):
    service_name = CATALOGUE_ENTRY.name
    model_config = service_config(CATALOGUE_ENTRY.name)

    # Ports and Kafka group: the service catalogue's (lineloop.contracts services.toml).
    grpc_port: int = CATALOGUE_ENTRY.grpc_port
    metrics_port: int | None = CATALOGUE_ENTRY.metrics_port
    consumer_group: str = CATALOGUE_ENTRY.consumer_group
    # The dashboard (docs/monitor.md#dashboard): a read-only web page served by this process on
    # bind_host; None (LINELOOP_MONITOR_HTTP_PORT=off): no page. 0: any free port (tests).
    http_port: int | None = CATALOGUE_ENTRY.http_port
    # How far back the page's charts reach (drift scores, throughput), and its throughput bucket.
    dashboard_history_s: float = Field(default=6 * 3600.0, gt=0)
    dashboard_bucket_s: int = Field(default=60, ge=1)
    # A camera with no frame for this long shows as quiet on the page.
    dashboard_camera_quiet_s: float = Field(default=60.0, gt=0)

    # The reference window is the first frames a line sends after start-up or
    # after a promotion; the current window is the newest frames.
    reference_frames: int = 200
    current_frames: int = 100
    evaluate_every: int = 25
    # Population stability index per quality statistic; > 0.25 is the usual "shifted" line.
    psi_threshold: float = 0.25
    # Small windows are noisy: a statistic's threshold is raised to the PSI that sampling noise
    # alone reaches this rarely (drift reports per frame of a steady line, all statistics together).
    false_alarms_per_frame: float = Field(default=1e-5, gt=0, lt=0.01)
    # Live accuracy (human labels vs the prediction made at ingest) below this drifts.
    min_live_accuracy: float = 0.8
    min_labels_for_accuracy: int = 20
    # After a drift is reported, a line stays "drifting" for this long and is not reported again.
    drift_cooldown_s: float = 600.0
    # Frames ingested without a prediction (Triton down, model not loaded) stay out of the
    # prediction statistics; above this share of the current window the line is in a scoring
    # outage (an alert of its own, not drift). Such frames are not scored later.
    max_unscored_share: float = 0.2
    # Frames (and their labels) older than this are deleted once no window needs them; a human
    # label arriving later than this after its frame no longer counts toward live accuracy.
    retention_s: float = 7 * 24 * 3600.0
    prune_every_s: float = 600.0

    @field_validator("http_port", mode="before")
    @classmethod
    def _off_is_none(cls, value):
        # An environment variable cannot say None: `off` does.
        return None if isinstance(value, str) and value.strip().lower() == "off" else value
