"""Monitor settings (env prefix LINELOOP_MONITOR_)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from lineloop.contracts.catalogue import service
from lineloop.runtime import ServiceSettings, service_config

CATALOGUE_ENTRY = service("monitor")


class MonitorSettings(ServiceSettings):
    service_name = "monitor"
    model_config = service_config("monitor")

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
    # Alerts (docs/monitor.md#alerts): raised once, cleared once. A drift alert (of the line, or of
    # one camera against that camera's own reference windows, of the same sizes) clears when every
    # statistic has stayed below this fraction of its threshold for a whole current window.
    drift_clear_fraction: float = Field(default=0.5, gt=0, le=1)
    # A scoring outage clears when the current window's unscored share is below this.
    unscored_clear_share: float = Field(default=0.1, ge=0, lt=1)
    # A camera that has sent frames (accepted or refused) and then none for this long is silent.
    camera_silent_s: float = Field(default=120.0, gt=0)
    # Of a camera's newest camera_refused_frames frames: above this share refused raises the
    # camera-refused alert, below camera_refused_clear_share clears it.
    camera_refused_frames: int = Field(default=50, ge=1, le=1024)
    camera_refused_share: float = Field(default=0.5, gt=0, lt=1)
    camera_refused_clear_share: float = Field(default=0.2, ge=0, lt=1)
    # How often each replica looks for silent cameras and refreshes the active-alert gauges.
    alert_check_every_s: float = Field(default=5.0, gt=0)

    # Frames (and their labels) older than this are deleted once no window needs them; a human
    # label arriving later than this after its frame no longer counts toward live accuracy.
    retention_s: float = 7 * 24 * 3600.0
    prune_every_s: float = 600.0

    @model_validator(mode="after")
    def _clear_levels_below_raise_levels(self):
        # Hysteresis needs a gap: a clear level at or above its raise level would flap.
        if self.unscored_clear_share >= self.max_unscored_share:
            raise ValueError(f"unscored_clear_share ({self.unscored_clear_share}) must be below max_unscored_share "
                             f"({self.max_unscored_share})")
        if self.camera_refused_clear_share >= self.camera_refused_share:
            raise ValueError(f"camera_refused_clear_share ({self.camera_refused_clear_share}) must be below "
                             f"camera_refused_share ({self.camera_refused_share})")
        return self

    @field_validator("http_port", mode="before")
    @classmethod
    def _off_is_none(cls, value):
        # An environment variable cannot say None: `off` does.
        return None if isinstance(value, str) and value.strip().lower() == "off" else value
