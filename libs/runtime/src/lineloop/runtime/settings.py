"""Settings from the environment (pydantic-settings).

Shared addresses of one deployment use the prefix `LINELOOP_`; each service's
own settings use `LINELOOP_<SERVICE>_`. Defaults are the embedded stack's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lineloop.contracts.catalogue import CATALOGUE, all_bucket_names

if TYPE_CHECKING:
    from lineloop.bus.security import KafkaSecurity
    from lineloop.storage.objects import ObjectStore

# Every bucket of the service catalogue; each service ensures them all at start.
BUCKETS = all_bucket_names()


class StackSettings(BaseSettings):
    """Where the shared infrastructure is."""

    model_config = SettingsConfigDict(env_prefix="LINELOOP_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    # How every Kafka client connects (lineloop.bus.security, docs/security.md): PLAINTEXT, SSL,
    # SASL_PLAINTEXT or SASL_SSL; the CA that signs the brokers' certificates (unset: the
    # system's), a client certificate where the brokers require one, SASL PLAIN or SCRAM.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_ca_file: Path | None = None
    kafka_cert_file: Path | None = None
    kafka_key_file: Path | None = None
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    s3_endpoint: str = "http://127.0.0.1:8333"
    s3_access_key: str = "lineloop"
    s3_secret_key: str = "lineloop-secret"
    s3_region: str = "us-east-1"
    # PEM bundle of the CA that signs an https S3 endpoint's certificate (a plant's own CA);
    # unset: the system's trusted CAs. Only for https endpoints.
    s3_ca_file: Path | None = None
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

    def kafka_security(self) -> KafkaSecurity:
        """How this deployment's Kafka clients connect. Raises ValueError, naming the variables,
        when they do not add up: every client is made through here, so a service refuses to start."""
        from lineloop.bus.security import KafkaSecurity

        return KafkaSecurity(self.kafka_security_protocol, self.kafka_ca_file, self.kafka_cert_file, self.kafka_key_file,
                             self.kafka_sasl_mechanism, self.kafka_sasl_username, self.kafka_sasl_password.get_secret_value())

    def object_store(self, endpoint: str = "", **options) -> ObjectStore:
        """The S3 store these settings name (keys, region, CA) at `endpoint` (default: s3_endpoint);
        `options`: ObjectStore.from_url's."""
        from lineloop.storage.objects import ObjectStore  # minio only where a store is used

        return ObjectStore.from_url(endpoint or self.s3_endpoint, self.s3_access_key, self.s3_secret_key, self.s3_region,
                                    ca_file=self.s3_ca_file, **options)

    @model_validator(mode="after")
    def _s3_ca_file_readable(self) -> StackSettings:
        # Fail closed at start: a configured CA that is missing must not fall back to anything.
        if self.s3_ca_file is not None and not self.s3_ca_file.is_file():
            raise ValueError(f"LINELOOP_S3_CA_FILE {self.s3_ca_file} is not a readable file")
        if self.s3_ca_file is not None and not self.s3_endpoint.startswith("https://"):
            raise ValueError(f"LINELOOP_S3_CA_FILE is set but LINELOOP_S3_ENDPOINT ({self.s3_endpoint}) is not https")
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> StackSettings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(f"LINELOOP_TOPIC_MIN_INSYNC_REPLICAS ({self.topic_min_insync_replicas}) exceeds "
                             f"LINELOOP_TOPIC_REPLICATION_FACTOR ({self.topic_replication_factor}): no write could succeed")
        return self


class SecuritySettings(BaseSettings):
    """Who may call a service's gRPC API, and how the port is encrypted (docs/security.md).

    `auth_mode` `off` (the default for now: tests and the embedded stack run without
    credentials) serves every caller and logs a WARNING at start; `required` checks every call
    but health and reflection: a bearer JWT (issuer, audience, a JWKS file or a PEM public key;
    RS256/ES256) and/or a client certificate from `grpc_tls_client_ca_file` (mTLS).
    Compose and k8s set `required`.
    """

    model_config = SettingsConfigDict(env_prefix="LINELOOP_", extra="ignore")

    auth_mode: Literal["off", "required"] = "off"
    auth_issuer: str = ""
    auth_audience: str = ""
    auth_jwks_file: Path | None = None
    auth_public_key_file: Path | None = None
    auth_roles_claim: str = "roles"
    # Clock skew tolerated on exp/nbf/iat between the token issuer and this host.
    auth_leeway_s: float = Field(default=30.0, ge=0)
    # Server certificate and key of the gRPC port (PEM): set both to serve TLS.
    grpc_tls_cert_file: Path | None = None
    grpc_tls_key_file: Path | None = None
    # CA of client certificates: set, every client must present a certificate it signed (mTLS).
    grpc_tls_client_ca_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.grpc_tls_cert_file is not None

    @property
    def jwt(self) -> bool:
        return bool(self.auth_issuer or self.auth_audience or self.auth_jwks_file or self.auth_public_key_file)

    @model_validator(mode="after")
    def _consistent(self) -> SecuritySettings:
        # Key files are read only when auth is required; the port's TLS files whenever they are set.
        keys = ("auth_jwks_file", "auth_public_key_file") if self.auth_mode == "required" else ()
        for name in (*keys, "grpc_tls_cert_file", "grpc_tls_key_file", "grpc_tls_client_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"LINELOOP_{name.upper()}={path} is not a file"
                                 + (" (`lineloop auth init <dir>` writes a JWKS and tokens)" if name == "auth_jwks_file" else ""))
        if (self.grpc_tls_cert_file is None) != (self.grpc_tls_key_file is None):
            raise ValueError("LINELOOP_GRPC_TLS_CERT_FILE and LINELOOP_GRPC_TLS_KEY_FILE go together: set both or neither")
        if self.grpc_tls_client_ca_file is not None and not self.tls:
            raise ValueError("LINELOOP_GRPC_TLS_CLIENT_CA_FILE needs the server's own LINELOOP_GRPC_TLS_CERT_FILE/KEY_FILE")
        if self.jwt:
            missing = [n for n, v in (("LINELOOP_AUTH_ISSUER", self.auth_issuer), ("LINELOOP_AUTH_AUDIENCE", self.auth_audience))
                       if not v]
            if (self.auth_jwks_file is None) == (self.auth_public_key_file is None):
                missing.append("exactly one of LINELOOP_AUTH_JWKS_FILE or LINELOOP_AUTH_PUBLIC_KEY_FILE")
            if missing:
                raise ValueError(f"bearer tokens need {', '.join(missing)}")
        if self.auth_mode == "required" and not self.jwt and self.grpc_tls_client_ca_file is None:
            raise ValueError("LINELOOP_AUTH_MODE=required but no way to authenticate is configured: set LINELOOP_AUTH_ISSUER, "
                             "LINELOOP_AUTH_AUDIENCE and LINELOOP_AUTH_JWKS_FILE (or _PUBLIC_KEY_FILE), and/or "
                             "LINELOOP_GRPC_TLS_CLIENT_CA_FILE for client certificates")
        return self


def service_config(name: str) -> SettingsConfigDict:
    """`model_config` for a service's settings: env prefix `LINELOOP_<NAME>_`."""
    return SettingsConfigDict(env_prefix=f"LINELOOP_{name.upper()}_", extra="ignore")


class ServiceSettings(BaseSettings):
    """What every service has; subclasses set `service_name` and their own fields. The ports and
    the Kafka group default to the service's row of the catalogue (lineloop.contracts services.toml)."""

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
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    @model_validator(mode="before")
    @classmethod
    def _catalogue_defaults(cls, data: object) -> object:
        entry = CATALOGUE.services.get(cls.service_name)
        if entry is not None and isinstance(data, dict):
            data = {"grpc_port": entry.grpc_port, "metrics_port": entry.metrics_port,
                    "consumer_group": entry.consumer_group, **data}
        return data

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
