"""The service catalogue (lineloop.contracts services.toml) against what restates it: the services'
settings and subscriptions, the documents, the embedded stack and the deployment files.

docker-compose.yml, the Dockerfile's build args and the k8s manifests are checked against the
catalogue's ports and buckets through the `conventions` fixture (test_compose.py,
test_dockerfiles.py, test_kubernetes.py); this file checks the rest. Nothing here starts a
server: the services are wired (their main.py `build`) but never started.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from lineloop.contracts.catalogue import CATALOGUE, event_table, load, markdown_table
from lineloop.contracts.topics import EVENTS
from lineloop.runtime import ServiceSettings

SERVICES = tuple(CATALOGUE.services)
PORT_FIELDS = ("grpc_port", "metrics_port", "http_port")


def _settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"lineloop.{service}.settings")
    (found,) = [value for value in vars(module).values()
                if isinstance(value, type) and issubclass(value, ServiceSettings) and value is not ServiceSettings
                and value.__module__ == module.__name__]
    return found


def _source_dir(repo: Path, service: str) -> Path:
    return repo / "services" / service / "src" / "lineloop" / service


def _handler_module(topic: str) -> str:
    """The module of a topic's handler (README conventions): frames.captured.v1 -> handlers_frames_captured."""
    return "handlers_" + re.sub(r"\.v\d+$", "", topic).replace(".", "_")


# ---- the catalogue itself -------------------------------------------------------------------

def test_the_catalogue_names_every_service_package(repo):
    assert set(SERVICES) == {p.parent.name for p in repo.glob("services/*/pyproject.toml")}


def test_the_loader_refuses_unknown_topics_buckets_and_shared_ports():
    text = (files("lineloop.contracts") / "services.toml").read_text()
    assert load(text) == CATALOGUE
    for broken, says in (
        (text.replace('"frames.captured.v1", "models.promoted.v1"', '"frames.captured.v2"'), "frames.captured.v2"),
        (text.replace('writes = ["builds"]', 'writes = ["artifacts"]'), "artifacts"),
        (text.replace("metrics_port = 9106", "metrics_port = 9101"), "9101"),
        (text.replace("grpc_port = 50051", "grpc_port = 50051\ngrcp_port = 1"), "grcp_port"),
    ):
        with pytest.raises(ValueError, match=says):
            load(broken)


# ---- the services -----------------------------------------------------------------------------

@pytest.mark.parametrize("service", SERVICES)
def test_settings_take_ports_and_group_from_the_catalogue(service, repo, monkeypatch):
    entry = CATALOGUE.service(service)
    for name in ("GRPC_PORT", "METRICS_PORT", "CONSUMER_GROUP", "HTTP_PORT"):
        monkeypatch.delenv(f"{entry.settings_prefix}{name}", raising=False)
    settings = _settings_class(service)()
    assert (settings.grpc_port, settings.metrics_port, settings.consumer_group) == (
        entry.grpc_port, entry.metrics_port, entry.consumer_group)
    if "http_port" in type(settings).model_fields:
        assert settings.http_port == entry.http_port
    # Taken from it, not copied: no catalogued port appears as a number in any settings module.
    ports = {port for other in CATALOGUE.services.values() for port in other.ports.values()}
    for path in _source_dir(repo, service).glob("settings*.py"):
        written = {int(n) for n in re.findall(r"(?<![\w.])(\d{4,5})(?![\w.])", path.read_text())}
        assert not written & ports, f"{path.relative_to(repo)} writes port(s) {sorted(written & ports)}: use the catalogue"


@pytest.fixture(scope="module")
def wired(tmp_path_factory) -> dict[str, object]:
    """Each service as its main.py wires it, not started: its handlers are registered on its bus."""
    state_dir = tmp_path_factory.mktemp("wired")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LINELOOP_STATE_DIR", str(state_dir))
        services = {}
        for name in SERVICES:
            main = importlib.import_module(f"lineloop.{name}.main")
            # Every main.py has one function that takes the settings and returns the Service.
            build = getattr(main, "build", None) or getattr(main, "build_service")
            services[name] = build(_settings_class(name)())
        yield services
    for service in services.values():
        service.db.engine.dispose()


@pytest.mark.parametrize("service", SERVICES)
def test_services_subscribe_to_exactly_the_catalogued_topics(wired, service):
    entry = CATALOGUE.service(service)
    subscriptions = wired[service].bus.subscriptions
    assert sorted(subscriptions) == sorted((entry.consumer_group, topic) for topic in entry.consumes), (
        f"{service} subscribes to {sorted(topic for _, topic in subscriptions)}; the catalogue says {sorted(entry.consumes)}"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_each_consumed_topic_has_its_handler_module(service, repo):
    handlers = {p.stem for p in _source_dir(repo, service).glob("handlers_*.py")}
    assert handlers == {_handler_module(topic) for topic in CATALOGUE.service(service).consumes}


def _events_constructed(source_dir: Path) -> set[str]:
    """Topics of the events the code under `source_dir` builds (test helpers aside)."""
    names = {cls.__name__: et.topic for cls, et in EVENTS.items()}
    found = set()
    for path in source_dir.rglob("*.py"):
        if path.name == "testing.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if callee in names:
                    found.add(names[callee])
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_services_produce_exactly_the_catalogued_topics(service, repo):
    built = _events_constructed(_source_dir(repo, service))
    assert built == set(CATALOGUE.service(service).produces), f"{service} builds events of {sorted(built)}"


def test_the_event_scan_sees_events_built_through_a_module():
    # monitor builds `events_pb2.DriftDetected(...)`: an attribute call, not a bare name.
    assert "drift.detected.v1" in _events_constructed(Path(importlib.import_module("lineloop.monitor").__path__[0]))


# ---- generated files ------------------------------------------------------------------------

def _keda_generator(repo: Path):
    spec = importlib.util.spec_from_file_location("keda_triggers", repo / "deploy/k8s/keda_triggers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_keda_files_are_generated_from_the_current_catalogue(repo):
    for path, text in _keda_generator(repo).outputs().items():
        assert path.read_text() == text, f"{path.relative_to(repo)} is stale: run `make catalogue`"


def _network_policy_generator(repo: Path):
    _keda_generator(repo)  # it imports its sibling by name
    spec = importlib.util.spec_from_file_location("network_policies", repo / "deploy/k8s/network_policies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_network_policies_are_generated_from_the_current_catalogue(repo):
    generator = _network_policy_generator(repo)
    for path, text in generator.outputs().items():
        assert path.read_text() == text, f"{path.relative_to(repo)} is stale: run `make catalogue`"
    for kustomization, generated in ((generator.BASE.parent, generator.BASE), (generator.TRITON.parent, generator.TRITON),
                                     (generator.DEV.parent, generator.DEV)):
        resources = yaml.safe_load((kustomization / "kustomization.yaml").read_text())["resources"]
        assert generated.name in resources, f"{kustomization.relative_to(repo)} does not apply {generated.name}"


def test_keda_triggers_are_the_catalogued_groups_and_topics(repo):
    for path in (repo / "deploy/k8s/components/autoscaling/autoscaling.yaml",
                 repo / "deploy/k8s/overlays/production/keda-triggers.yaml"):
        scaled = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}
        assert set(scaled) == {name for name, entry in CATALOGUE.services.items() if entry.consumes}
        for name, doc in scaled.items():
            entry = CATALOGUE.service(name)
            kafka = [t["metadata"] for t in doc["spec"]["triggers"] if t["type"] == "kafka"]
            assert [(m["consumerGroup"], m["topic"]) for m in kafka] == [
                (f"{entry.consumer_group}.{topic}", topic) for topic in entry.consumes], f"{path.name}: {name}"


def test_production_overlay_uses_the_generated_triggers(repo):
    kustomization = yaml.safe_load((repo / "deploy/k8s/overlays/production/kustomization.yaml").read_text())
    assert {"path": "keda-triggers.yaml"} in kustomization["patches"]
    # No hand-kept trigger patches beside it, which would go stale when a service's topics change.
    assert not [p for p in kustomization["patches"] if p.get("target", {}).get("kind") == "ScaledObject"]


# ---- documents --------------------------------------------------------------------------------

def _codes(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_readme_service_table_is_the_catalogue(repo):
    readme = (repo / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in CATALOGUE.services:
            rows[cells[0]] = cells
    assert set(rows) == set(SERVICES), "README's service table lacks a service"
    for name, (_, _, consumes, produces, grpc) in rows.items():
        entry = CATALOGUE.service(name)
        assert _codes(consumes) == list(entry.consumes), f"README: {name} consumes"
        assert _codes(produces) == list(entry.produces), f"README: {name} produces"
        assert re.search(r"\((\d+)\)$", grpc).group(1) == str(entry.grpc_port), f"README: {name} gRPC port"


def test_readme_bucket_lists_are_the_catalogue(repo):
    readme = (repo / "README.md").read_text()
    bullet = re.search(r"^- Buckets:.*?(?=^- |^#)", readme, re.MULTILINE | re.DOTALL).group(0)
    # "(+ `tansu` for the embedded broker's own storage)": the embedded stack's, not lineloop's.
    embedded_only = set(re.findall(r"\(\+ `([a-z0-9-]+)`", bullet))
    assert set(_codes(bullet)) - embedded_only == set(CATALOGUE.buckets.values())
    (s3_row,) = [line for line in readme.splitlines() if line.startswith("| S3 API")]
    assert set(re.findall(r"`(lineloop-[a-z0-9-]+)`", s3_row)) == set(CATALOGUE.buckets.values())


def _documents(repo: Path) -> list[Path]:
    return [repo / "README.md", *sorted(repo.glob("docs/*.md")), *sorted(repo.glob("services/*/README.md")),
            repo / "deploy/local/README.md"]


def test_documents_state_only_catalogued_ports(repo):
    # "ingest 50051", "monitor 9106": any service named beside a port-like number, in any document.
    seen = 0
    for path in _documents(repo):
        for name, number in re.findall(rf"\b({'|'.join(SERVICES)}):? (\d{{4,5}})\b", path.read_text()):
            seen += 1
            assert int(number) in CATALOGUE.service(name).ports.values(), f"{path.relative_to(repo)}: {name} {number}"
        # The service READMEs state their own: `GRPC_PORT` (50051).
        if path.parent.parent.name == "services":
            entry = CATALOGUE.service(path.parent.name)
            for setting, number in re.findall(r"`(GRPC_PORT|METRICS_PORT|HTTP_PORT)` \((\d+)\)", path.read_text()):
                seen += 1
                assert int(number) == getattr(entry, setting.lower()), f"{path.relative_to(repo)}: {setting}"
    assert seen >= 2 * len(SERVICES), "the scan found no ports: did the README's port lists move?"


def test_readme_port_lists_name_every_service(repo):
    readme = (repo / "README.md").read_text()
    for setting, field in (("GRPC_PORT", "grpc_port"), ("METRICS_PORT", "metrics_port")):
        listed = re.search(rf"`{setting}`\s*\(([^)]*)\)", readme).group(1)
        assert dict(re.findall(r"(\w+) (\d+)", listed)) == {
            name: str(getattr(entry, field)) for name, entry in CATALOGUE.services.items()}, setting


def test_service_readmes_list_what_the_service_consumes_and_produces(repo):
    topics = {et.topic for et in EVENTS.values()}
    checked = 0
    for path in repo.glob("services/*/README.md"):
        entry = CATALOGUE.service(path.parent.name)
        for row, catalogued in (("consumes", entry.consumes), ("produces", entry.produces)):
            match = re.search(rf"^\| {row} \|(.*)\|$", path.read_text(), re.MULTILINE)
            if match:  # a README may leave the table out; one that has it must be right
                checked += 1
                assert [c for c in _codes(match.group(1)) if c in topics] == list(catalogued), f"{path}: {row}"
    assert checked, "no service README has a consumes/produces table any more"


def test_docs_service_table_is_generated_from_the_catalogue(repo):
    assert markdown_table() in (repo / "docs/services.md").read_text(), (
        "docs/services.md's table is stale: paste `python -m lineloop.contracts.catalogue`"
    )


def test_docs_event_table_is_generated_from_the_catalogue_and_the_proto_options(repo):
    table = event_table()
    assert table.count("\n| `") == len(EVENTS), "the event table lacks a row per event topic"
    assert table in (repo / "docs/architecture.md").read_text(), (
        "docs/architecture.md's event table is stale: paste `python -m lineloop.contracts.catalogue --events`"
    )


# ---- the embedded stack and compose ----------------------------------------------------------

def test_lineloop_up_runs_the_services_on_their_catalogued_ports(tmp_path, monkeypatch):
    from lineloop.stack.config import StackConfig
    from lineloop.stack.services import ServiceFleet

    for name in SERVICES:
        for setting in ("GRPC_PORT", "METRICS_PORT"):
            monkeypatch.delenv(f"LINELOOP_{name.upper()}_{setting}", raising=False)
    config = StackConfig(state_dir=tmp_path)
    fleet = ServiceFleet(config)
    for name, entry in CATALOGUE.services.items():
        env = fleet.env(name)
        assert (int(env[f"{entry.settings_prefix}GRPC_PORT"]), int(env[f"{entry.settings_prefix}METRICS_PORT"])) == (
            entry.grpc_port, entry.metrics_port)
        assert fleet.grpc_address(name).endswith(f":{entry.grpc_port}")
    # The stack's own servers keep clear of the services' ports.
    taken = {port for entry in CATALOGUE.services.values() for port in entry.ports.values()}
    clash = {name: port for name, port in config.all_ports().items() if port in taken}
    assert not clash, f"embedded stack ports {clash} are catalogued service ports"


def test_embedded_stack_creates_every_catalogued_bucket():
    from lineloop.runtime.settings import BUCKETS as ENSURED_BY_SERVICES
    from lineloop.stack.config import BUCKETS as CREATED_BY_STACK

    assert set(CREATED_BY_STACK) == set(ENSURED_BY_SERVICES) == set(CATALOGUE.buckets.values())


def test_compose_publishes_no_host_port_twice(compose_ports):
    published = [port.host_port for ports in compose_ports.values() for port in ports]
    assert len(published) == len(set(published)), sorted(p for p in published if published.count(p) > 1)


@pytest.mark.parametrize("service", [name for name, entry in CATALOGUE.services.items() if entry.http_port])
def test_a_served_http_port_is_published_where_the_others_are(service, compose, compose_ports, repo):
    """A port the service's settings serve (the monitor's dashboard) is exposed by compose and the
    k8s base too."""
    entry = CATALOGUE.service(service)
    published = {(port.host_port, port.container_port) for port in compose_ports.get(service, [])}
    if "http_port" not in _settings_class(service).model_fields:
        # Reserved, not served yet: nothing may expose it meanwhile.
        assert (entry.http_port, entry.http_port) not in published
        return
    assert (entry.http_port, entry.http_port) in published
    assert compose["services"][service]["environment"][f"{entry.settings_prefix}HTTP_PORT"] == str(entry.http_port)
    docs = [doc for doc in yaml.safe_load_all((repo / f"deploy/k8s/base/{service}.yaml").read_text()) if doc]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "http", "containerPort": entry.http_port} in container["ports"]
