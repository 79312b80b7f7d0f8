"""Addresses, ports and credentials of one embedded stack.

The public addresses use the shared `LINELOOP_*` names from the README conventions; the
ports only the stack itself needs (SeaweedFS internals, Triton metrics) use
`LINELOOP_STACK_*`, so two stacks on one machine can be told apart completely.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from lineloop.contracts.catalogue import all_bucket_names, bucket

ADMIN_GRPC_OFFSET = 10000
# The service catalogue's buckets (lineloop.contracts services.toml), as in production.
TRITON_BUCKET = bucket("triton")
BUCKETS = all_bucket_names()
TANSU_BUCKET = "tansu"
HOST = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class WeedPorts:
    """SeaweedFS `mini` listens on all of these; each needs to be free."""

    s3_grpc: int = 18333
    master: int = 9333
    master_grpc: int = 19333
    volume: int = 9340
    volume_grpc: int = 19340
    filer: int = 8888
    filer_grpc: int = 18888
    admin: int = 23646

    @property
    def admin_grpc(self) -> int:
        # weed's plugin worker dials the admin server at admin port + 10000 whatever
        # -admin.port.grpc says, so the two are kept in that relation.
        return self.admin + ADMIN_GRPC_OFFSET

    def ports(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "admin_grpc": self.admin_grpc}


@dataclasses.dataclass(frozen=True)
class StackConfig:
    state_dir: Path
    kafka_port: int = 9092
    s3_port: int = 8333
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    weed: WeedPorts = WeedPorts()
    s3_access_key: str = "lineloop"
    s3_secret_key: str = "lineloop-secret"
    s3_region: str = "us-east-1"
    topic_partitions: int = 3

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def triton_http(self) -> str:
        return f"{HOST}:{self.triton_http_port}"

    @property
    def triton_grpc(self) -> str:
        return f"{HOST}:{self.triton_grpc_port}"

    @property
    def triton_repository(self) -> str:
        """Triton's model repository: the `lineloop-triton` bucket, as in production."""
        return f"s3://{self.s3_endpoint}/{TRITON_BUCKET}"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def env(self) -> dict[str, str]:
        """The shared `LINELOOP_*` environment that points a service at this stack."""
        return {
            "LINELOOP_STATE_DIR": str(self.state_dir),
            "LINELOOP_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "LINELOOP_S3_ENDPOINT": self.s3_endpoint,
            "LINELOOP_S3_ACCESS_KEY": self.s3_access_key,
            "LINELOOP_S3_SECRET_KEY": self.s3_secret_key,
            "LINELOOP_S3_REGION": self.s3_region,
            "LINELOOP_TRITON_GRPC": self.triton_grpc,
            "LINELOOP_TRITON_HTTP": self.triton_http,
            "LINELOOP_TRITON_REPOSITORY": self.triton_repository,
            "LINELOOP_TOPIC_PARTITIONS": str(self.topic_partitions),
        }

    def all_ports(self) -> dict[str, int]:
        ports = {
            "kafka": self.kafka_port,
            "s3": self.s3_port,
            "triton_http": self.triton_http_port,
            "triton_grpc": self.triton_grpc_port,
            "triton_metrics": self.triton_metrics_port,
        }
        ports.update({f"weed_{k}": v for k, v in self.weed.ports().items()})
        return ports

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StackConfig:
        """The stack described by the environment, with the documented defaults."""
        env = os.environ if environ is None else environ
        defaults = cls(state_dir=Path(".lineloop"))
        weed = WeedPorts(
            **{
                field.name: int(env.get(f"LINELOOP_STACK_WEED_{field.name.upper()}_PORT", field.default))
                for field in dataclasses.fields(WeedPorts)
            }
        )
        return cls(
            state_dir=Path(env.get("LINELOOP_STATE_DIR", ".lineloop")).resolve(),
            kafka_port=_port_of(env.get("LINELOOP_KAFKA_BOOTSTRAP"), defaults.kafka_port),
            s3_port=_port_of(env.get("LINELOOP_S3_ENDPOINT"), defaults.s3_port),
            triton_http_port=_port_of(env.get("LINELOOP_TRITON_HTTP"), defaults.triton_http_port),
            triton_grpc_port=_port_of(env.get("LINELOOP_TRITON_GRPC"), defaults.triton_grpc_port),
            triton_metrics_port=int(env.get("LINELOOP_STACK_TRITON_METRICS_PORT", defaults.triton_metrics_port)),
            weed=weed,
            s3_access_key=env.get("LINELOOP_S3_ACCESS_KEY", defaults.s3_access_key),
            s3_secret_key=env.get("LINELOOP_S3_SECRET_KEY", defaults.s3_secret_key),
            s3_region=env.get("LINELOOP_S3_REGION", defaults.s3_region),
            topic_partitions=int(env.get("LINELOOP_TOPIC_PARTITIONS", defaults.topic_partitions)),
        )

    @classmethod
    def on_free_ports(cls, state_dir: Path) -> StackConfig:
        """A stack that collides with nothing running now (tests, a second stack)."""
        ports = free_ports(4 + len(dataclasses.fields(WeedPorts)))
        weed = WeedPorts(*ports[5:], admin=free_port_with_partner(ADMIN_GRPC_OFFSET, exclude=set(ports)))
        return cls(
            state_dir=Path(state_dir).resolve(),
            kafka_port=ports[0],
            s3_port=ports[1],
            triton_http_port=ports[2],
            triton_grpc_port=ports[3],
            triton_metrics_port=ports[4],
            weed=weed,
        )


def _port_of(address: str | None, default: int) -> int:
    if not address:
        return default
    if "://" not in address:
        address = f"tcp://{address}"
    port = urlsplit(address).port
    return default if port is None else port


def free_port_with_partner(offset: int, exclude: set[int]) -> int:
    """A free port p whose p + offset is free too."""
    for _ in range(200):
        candidate = free_ports(1)[0]
        partner = candidate + offset
        if partner > 65535 or {candidate, partner} & exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, partner))
            except OSError:
                continue
        return candidate
    raise RuntimeError(f"found no free port p with p + {offset} free")


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now; held open together so that they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
