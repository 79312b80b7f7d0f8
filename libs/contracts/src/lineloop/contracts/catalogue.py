"""The service catalogue (services.toml beside this module), typed and checked on import.

Each service's ports, Kafka consumer group, topics consumed and produced, and the buckets it
reads and writes are written once, in services.toml; settings defaults, the embedded stack,
the CLI and the deployment files take them from here or are tested against it.

    from lineloop.contracts.catalogue import CATALOGUE, bucket
    CATALOGUE.service("ingest").grpc_port   # 50051
    bucket("frames")                         # "lineloop-frames"

    python -m lineloop.contracts.catalogue           # the Markdown table of docs/services.md
    python -m lineloop.contracts.catalogue --events  # the event table of docs/architecture.md
"""

from __future__ import annotations

import sys
import tomllib
from importlib.resources import files
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lineloop.contracts.topics import BY_TOPIC, EVENTS

Port = Annotated[int, Field(gt=0, lt=65536)]


class ServiceEntry(BaseModel):
    """One service's row of the catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    grpc_port: Port
    metrics_port: Port
    http_port: Port | None = None
    # The prefix of the service's Kafka groups: each subscription is `<consumer_group>.<topic>`.
    consumer_group: str = Field(min_length=1)
    consumes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    # Bucket roles (keys of [buckets]), not names: a name is written once.
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    @property
    def ports(self) -> dict[str, int]:
        """Port name (as compose and k8s name them) -> number."""
        named = {"grpc": self.grpc_port, "metrics": self.metrics_port, "http": self.http_port}
        return {name: port for name, port in named.items() if port is not None}

    @property
    def settings_prefix(self) -> str:
        """The environment prefix of its settings (lineloop.runtime.service_config)."""
        return f"LINELOOP_{self.name.upper()}_"


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    buckets: dict[str, str]
    services: dict[str, ServiceEntry]

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("services"), dict):
            data = {**data, "services": {name: {"name": name, **entry} for name, entry in data["services"].items()}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        problems = []
        if len(set(self.buckets.values())) != len(self.buckets):
            problems.append(f"two bucket roles share a name: {self.buckets}")
        owners: dict[int, str] = {}
        for entry in self.services.values():
            for kind, port in entry.ports.items():
                where = f"{entry.name} {kind}_port"
                if port in owners:
                    problems.append(f"{where} {port} is also {owners[port]}")
                owners[port] = where
            for topic in (*entry.consumes, *entry.produces):
                if topic not in BY_TOPIC:
                    problems.append(f"{entry.name}: {topic!r} is no event topic (known: {', '.join(sorted(BY_TOPIC))})")
            for role in (*entry.reads, *entry.writes):
                if role not in self.buckets:
                    problems.append(f"{entry.name}: bucket role {role!r} is not in [buckets] ({', '.join(self.buckets)})")
        if problems:
            raise ValueError("services.toml: " + "; ".join(problems))
        return self

    def service(self, name: str) -> ServiceEntry:
        try:
            return self.services[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in the service catalogue (services: {', '.join(self.services)})") from None

    def bucket(self, role: str) -> str:
        try:
            return self.buckets[role]
        except KeyError:
            raise KeyError(f"no bucket role {role!r} in the service catalogue (roles: {', '.join(self.buckets)})") from None

    def buckets_used(self) -> set[str]:
        """Names of the buckets some service reads or writes: what a deployment must create."""
        return {self.buckets[role] for entry in self.services.values() for role in (*entry.reads, *entry.writes)}

    def consumers_of(self, topic: str) -> list[str]:
        return [entry.name for entry in self.services.values() if topic in entry.consumes]

    def producers_of(self, topic: str) -> list[str]:
        return [entry.name for entry in self.services.values() if topic in entry.produces]


def load(text: str | None = None) -> Catalogue:
    """The catalogue in `text` (TOML), by default the packaged services.toml."""
    if text is None:
        text = files("lineloop.contracts").joinpath("services.toml").read_text(encoding="utf-8")
    return Catalogue.model_validate(tomllib.loads(text))


CATALOGUE: Catalogue = load()


def service(name: str) -> ServiceEntry:
    return CATALOGUE.service(name)


def bucket(role: str) -> str:
    return CATALOGUE.bucket(role)


def all_bucket_names() -> tuple[str, ...]:
    return tuple(CATALOGUE.buckets.values())


def markdown_table(catalogue: Catalogue = CATALOGUE) -> str:
    """docs/services.md's table (a test keeps the two equal)."""

    def code(items: tuple[str, ...]) -> str:
        return ", ".join(f"`{item}`" for item in items) or "—"

    rows = [
        "| service | gRPC | metrics | HTTP | consumer group | consumes | produces | reads | writes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in catalogue.services.values():
        buckets_read = tuple(catalogue.buckets[r] for r in e.reads)
        buckets_written = tuple(catalogue.buckets[r] for r in e.writes)
        rows.append(
            f"| {e.name} | {e.grpc_port} | {e.metrics_port} | {e.http_port or '—'} | `{e.consumer_group}` "
            f"| {code(e.consumes)} | {code(e.produces)} | {code(buckets_read)} | {code(buckets_written)} |"
        )
    return "\n".join(rows) + "\n"


def event_table(catalogue: Catalogue = CATALOGUE) -> str:
    """docs/architecture.md's event table (a test keeps the two equal): one row per event topic, in
    events.proto's order; message and key from the proto options, producers and consumers from the
    catalogue ("—" where only something outside the six services produces or consumes it)."""
    rows = ["| topic | message | key | producers | consumers |", "|---|---|---|---|---|"]
    for et in EVENTS.values():
        producers = ", ".join(catalogue.producers_of(et.topic)) or "—"
        consumers = ", ".join(catalogue.consumers_of(et.topic)) or "—"
        rows.append(f"| `{et.topic}` | `{et.message.__name__}` | `{et.key_field}` | {producers} | {consumers} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(event_table() if sys.argv[1:] == ["--events"] else markdown_table())
