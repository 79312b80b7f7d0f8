"""Settings from the environment (pydantic-settings).

Shared addresses of one deployment use the prefix `LINELOOP_`; each service's
own settings use `LINELOOP_<SERVICE>_`. Defaults are the embedded stack's.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUCKETS = (
    "lineloop-frames",
    "lineloop-datasets",
    "lineloop-models",
    "lineloop-builds",
    "lineloop-triton",
    "lineloop-sim",
)


class StackSettings(BaseSettings):
    """Where the shared infrastructure is."""

    model_config = SettingsConfigDict(env_prefix="LINELOOP_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    s3_endpoint: str = "http://127.0.0.1:8333"
    s3_access_key: str = "lineloop"
    s3_secret_key: str = "lineloop-secret"
    s3_region: str = "us-east-1"
    triton_grpc: str = "127.0.0.1:8001"
    triton_http: str = "127.0.0.1:8000"
    state_dir: Path = Path(".lineloop")
    topic_partitions: int = 3
    # Replicas of each topic and how many must have a record before acks=all answers: 3/2 on a
    # three-broker cluster (compose's kafka-cluster.yml, k8s); 1/1 on the embedded single broker.
    # Applied when a topic is created (lineloop.bus.topics).
    topic_replication_factor: int = Field(default=1, ge=1)
    topic_min_insync_replicas: int = Field(default=1, ge=1)
    log_level: str = "INFO"
    log_format: str = "json"

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> StackSettings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(f"LINELOOP_TOPIC_MIN_INSYNC_REPLICAS ({self.topic_min_insync_replicas}) exceeds "
                             f"LINELOOP_TOPIC_REPLICATION_FACTOR ({self.topic_replication_factor}): no write could succeed")
        return self


def service_config(name: str) -> SettingsConfigDict:
    """`model_config` for a service's settings: env prefix `LINELOOP_<NAME>_`."""
    return SettingsConfigDict(env_prefix=f"LINELOOP_{name.upper()}_", extra="ignore")


class ServiceSettings(BaseSettings):
    """What every service has; subclasses set `service_name`, the port defaults and their own fields."""

    service_name: ClassVar[str] = ""

    bind_host: str = "127.0.0.1"      # 0.0.0.0 in containers
    grpc_port: int = 0                # 0: any free port (tests)
    metrics_port: int | None = 0      # None: no /metrics endpoint
    database_url: str = ""            # empty: SQLite file under the state dir
    # Kafka consumer group of every handler; replicas of one deployment share it.
    consumer_group: str = ""          # empty: the service's name
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_interval_ms: int = 3_000
    # Deliveries of one record that never finished (the process died handling it) before the
    # bus dead-letters it as `poison` instead of running the handler again.
    bus_max_deliveries: int = 5
    startup_timeout_s: float = 60.0
    stack: StackSettings = Field(default_factory=StackSettings)

    @model_validator(mode="after")
    def _default_consumer_group(self) -> ServiceSettings:
        self.consumer_group = self.consumer_group or self.service_name
        return self

    @property
    def sql_url(self) -> str:
        if self.database_url:
            return self.database_url
        path = (self.stack.state_dir / f"{self.service_name}.db").resolve()
        return f"sqlite:///{path}"
