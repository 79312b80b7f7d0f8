"""Shared fixtures for the deployment-file checks: the repository, the conventions the files
follow (each service's ports and buckets from the service catalogue, lineloop.contracts'
services.toml; the shared settings parsed from README.md, the document that binds them), and
the parsed compose file. test_catalogue.py checks the README against the catalogue."""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lineloop.contracts.catalogue import CATALOGUE

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Conventions:
    services: tuple[str, ...]
    grpc_ports: dict[str, int]
    metrics_ports: dict[str, int]
    shared_env: frozenset[str]
    buckets: frozenset[str]  # what a deployment creates: those some service reads or writes
    defaults: dict[str, str]

    def service_env(self, service: str) -> set[str]:
        prefix = f"LINELOOP_{service.upper()}_"
        return {prefix + "GRPC_PORT", prefix + "METRICS_PORT", prefix + "DATABASE_URL"}


def _bullet(readme: str, starts_with: str) -> str:
    match = re.search(rf"^- {re.escape(starts_with)}.*?(?=^- |^#|\Z)", readme, re.MULTILINE | re.DOTALL)
    assert match, f"README has no bullet starting with {starts_with!r}"
    return match.group(0)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def conventions() -> Conventions:
    readme = (REPO / "README.md").read_text()
    shared = _bullet(readme, "Shared, one per deployment")
    return Conventions(
        services=tuple(sorted(CATALOGUE.services)),
        grpc_ports={name: entry.grpc_port for name, entry in CATALOGUE.services.items()},
        metrics_ports={name: entry.metrics_port for name, entry in CATALOGUE.services.items()},
        shared_env=frozenset(re.findall(r"`((?:LINELOOP|OTEL)_[A-Z0-9_]+)`", shared)),
        buckets=frozenset(CATALOGUE.buckets_used()),
        defaults=dict(re.findall(r"`(LINELOOP_[A-Z0-9_]+)` \(([^)]*)\)", shared)),
    )


@dataclass(frozen=True)
class Published:
    """One `ports:` entry of a compose service, short syntax `[HOST_IP:]HOST_PORT:CONTAINER_PORT`."""

    host_ip: str | None  # None: Docker publishes on every interface
    host_port: int
    container_port: int


def _published(definition: dict) -> list[Published]:
    found = []
    for entry in definition.get("ports", []):
        match = re.fullmatch(r"(?:(.+):)?(\d+):(\d+)(?:/(?:tcp|udp))?", str(entry))
        assert match, f"ports entry {entry!r} is not [HOST_IP:]HOST_PORT:CONTAINER_PORT"
        found.append(Published(match.group(1), int(match.group(2)), int(match.group(3))))
    return found


@pytest.fixture(scope="session")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def published_ports():
    """`published_ports(compose_service_definition)`: its `ports:` entries, parsed."""
    return _published


@pytest.fixture(scope="session")
def compose_ports(compose) -> dict[str, list[Published]]:
    """docker-compose.yml's published ports by service (those that publish any)."""
    return {name: _published(definition) for name, definition in compose["services"].items() if definition.get("ports")}


@pytest.fixture(scope="session")
def console_scripts() -> dict[str, dict[str, str]]:
    """services/<name> -> its [project.scripts]."""
    scripts = {}
    for pyproject in REPO.glob("services/*/pyproject.toml"):
        with pyproject.open("rb") as f:
            scripts[pyproject.parent.name] = tomllib.load(f)["project"].get("scripts", {})
    return scripts


_CREATE = {"create_counter", "create_up_down_counter", "create_histogram", "create_gauge"}


def _instruments_in_source(repo: Path) -> list[tuple[str, str, str]]:
    """(create_* method, name, unit) of every OpenTelemetry instrument the packages create."""
    found = []
    for path in [*repo.glob("libs/*/src/**/*.py"), *repo.glob("services/*/src/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _CREATE:
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    unit = next((k.value.value for k in node.keywords if k.arg == "unit" and isinstance(k.value, ast.Constant)), "")
                    found.append((node.func.attr, node.args[0].value, unit))
    return found


def _prometheus_names(instruments: list[tuple[str, str, str]]) -> set[str]:
    """The series names the services' own Prometheus exporter gives these instruments."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    reader = PrometheusMetricReader(disable_target_info=True)
    # The reader registers itself globally; read it through a private registry instead. It has
    # no thread to stop, and shutting it down would unregister it from the global one again.
    REGISTRY.unregister(reader._collector)
    registry = CollectorRegistry()
    registry.register(reader._collector)
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    meter = provider.get_meter("dashboard-check")
    for method, name, unit in instruments:
        instrument = getattr(meter, method)(name, unit=unit)
        (instrument.add if "counter" in method else instrument.record if method == "create_histogram" else instrument.set)(1)
    return {
        sample.name
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


@pytest.fixture(scope="session")
def exported_metrics() -> set[str]:
    """Every series name the services and libraries export to Prometheus, from their source: what
    the dashboard and the alert rules may query."""
    instruments = _instruments_in_source(REPO)
    assert any(name == "lineloop.events.consumed" for _, name, _ in instruments), "instrument scan found nothing"
    return _prometheus_names(instruments)
