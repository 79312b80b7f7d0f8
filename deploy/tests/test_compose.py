"""docker-compose.yml and its configuration files under deploy/compose/."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from lineloop.contracts.catalogue import bucket
from lineloop.contracts.topics import MAX_INLINE_IMAGE_BYTES, MAX_RECORD_BYTES

HEALTHCHECK = ["CMD", "python", "-m", "lineloop.runtime.healthcheck"]
# The one address docker-compose.yml publishes every port on: loopback unless the operator sets it.
PUBLISH_HOST = "${LINELOOP_PUBLISH_HOST:-127.0.0.1}"


def _docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose binary not installed (Debian: apt-get install -y docker-compose)")
    return binary


def _compose_config(repo: Path, *files: str, **variables: str) -> subprocess.CompletedProcess:
    command = [_docker_compose()]
    for file in files:
        command += ["-f", file]
    # A clean environment: the file's own ${VAR:-default}s must be enough to validate, plus the
    # variables an override requires.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **variables}
    return subprocess.run([*command, "config", "-q"], cwd=repo, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "files",
    [("docker-compose.yml",), ("docker-compose.yml", "deploy/compose/gpu.yml"),
     ("docker-compose.yml", "deploy/compose/kafka-cluster.yml")],
    ids=["stack", "stack+gpu", "stack+kafka-cluster"],
)
def test_docker_compose_validates_the_file(repo, files):
    result = _compose_config(repo, *files)
    assert result.returncode == 0, result.stderr


def test_docker_compose_validates_the_plant_gateway_override(repo):
    files = ("docker-compose.yml", "deploy/compose/plant-gateways.yml")
    assert _compose_config(repo, *files, LINELOOP_GATEWAY_PUBLISH_HOST="10.20.0.5").returncode == 0
    # Without the address it refuses, saying what to set, rather than publishing somewhere.
    refused = _compose_config(repo, *files)
    assert refused.returncode != 0 and "LINELOOP_GATEWAY_PUBLISH_HOST" in refused.stderr


def test_the_gpu_compiler_image_gets_the_tensorrt_its_h100_profiles_build_with(repo):
    gpu = yaml.safe_load((repo / "deploy/compose/gpu.yml").read_text())
    arg = gpu["services"]["compiler"]["build"]["args"]["EXTRA_PACKAGES"]
    default = re.fullmatch(r"\$\{LINELOOP_COMPILER_EXTRA_PACKAGES:-(.+)\}", arg).group(1)
    (version,) = re.findall(r"\btensorrt-cu12==(\d+\.\d+)\.\*", default)
    profiles = yaml.safe_load((repo / "services/compiler/src/lineloop/compiler/profiles.yaml").read_text())["profiles"]
    cloud = {p["tensorrt_version"] for p in profiles.values() if p["runtime"] == "tensorrt" and p["gpu_arch"] == "sm_90"}
    assert cloud == {version}, f"gpu.yml installs TensorRT {version}, the sm_90 profiles build with {sorted(cloud)}"
    # Only the args change: the GPU images come from the one Dockerfile docker-compose.yml names.
    assert all(set(gpu["services"][s]["build"]) == {"args"} for s in ("training", "compiler"))
    dockerfile = (repo / "deploy/docker/service.Dockerfile").read_text()
    assert 'ARG EXTRA_PACKAGES=""' in dockerfile
    assert re.search(r"RUN if \[ -n \"\$\{EXTRA_PACKAGES\}\" \]; then .*pip install .*\$\{EXTRA_PACKAGES\}", dockerfile)


def test_docker_compose_rejects_an_invalid_file(repo, tmp_path):
    # The validation above means something only if this docker-compose checks the keys we rely on.
    broken = (repo / "docker-compose.yml").read_text().replace("capabilities: [gpu]", "capability: [gpu]")
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = _compose_config(tmp_path, "docker-compose.yml")
    assert result.returncode != 0
    assert "capability" in result.stderr


def test_every_service_is_built_from_the_service_dockerfile_with_its_name(compose, conventions, repo):
    for service in conventions.services:
        definition = compose["services"].get(service)
        assert definition is not None, f"docker-compose.yml has no service {service}"
        assert definition["build"]["context"] == "."
        assert definition["build"]["dockerfile"] == "deploy/docker/service.Dockerfile"
        assert (repo / definition["build"]["dockerfile"]).is_file()
        assert definition["build"]["args"]["SERVICE"] == service
        assert definition["image"].split(":")[0] == f"lineloop/{service}"


def test_service_environment_follows_the_readme(compose, conventions):
    for service in conventions.services:
        env = compose["services"][service]["environment"]
        prefix = f"LINELOOP_{service.upper()}_"
        lineloop_names = {name for name in env if name.startswith(("LINELOOP_", "OTEL_"))}
        assert conventions.shared_env | conventions.service_env(service) <= lineloop_names, service
        # Beyond the shared settings, a service reads only its own prefix.
        unknown = {name for name in lineloop_names - conventions.shared_env if not name.startswith(prefix)}
        assert not unknown, f"{service} gets settings it does not read: {unknown}"
        assert int(env[prefix + "GRPC_PORT"]) == conventions.grpc_ports[service]
        assert int(env[prefix + "METRICS_PORT"]) == conventions.metrics_ports[service]
        assert env["LINELOOP_STATE_DIR"] == "/data"


def test_each_service_uses_its_own_postgres_database(compose, conventions):
    postgres_databases = compose["services"]["postgres"]["environment"]["LINELOOP_DATABASES"].split()
    assert sorted(postgres_databases) == sorted(conventions.services)
    for service in conventions.services:
        url = compose["services"][service]["environment"][f"LINELOOP_{service.upper()}_DATABASE_URL"]
        parts = urlsplit(url)
        assert parts.scheme == "postgresql+psycopg"
        assert parts.username == service
        assert parts.hostname == "postgres"
        assert parts.path == f"/{service}"


def test_service_addresses_point_at_compose_services(compose, conventions):
    services = compose["services"]
    for service in conventions.services:
        env = services[service]["environment"]
        hosts = {
            "LINELOOP_KAFKA_BOOTSTRAP": env["LINELOOP_KAFKA_BOOTSTRAP"].split(":")[0],
            "LINELOOP_S3_ENDPOINT": urlsplit(env["LINELOOP_S3_ENDPOINT"]).hostname,
            "LINELOOP_TRITON_GRPC": env["LINELOOP_TRITON_GRPC"].split(":")[0],
            "LINELOOP_TRITON_HTTP": env["LINELOOP_TRITON_HTTP"].split(":")[0],
            "OTEL_EXPORTER_OTLP_ENDPOINT": urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname,
        }
        for name, host in hosts.items():
            assert host in services, f"{service}: {name} names {host!r}, not a compose service"


def test_addresses_of_other_services_use_their_grpc_ports(compose, conventions):
    for service in conventions.services:
        for name, value in compose["services"][service]["environment"].items():
            match = re.fullmatch(r"([a-z]+):(\d+)", str(value))
            if match and match.group(1) in conventions.grpc_ports:
                assert int(match.group(2)) == conventions.grpc_ports[match.group(1)], f"{service}: {name}={value}"


def test_service_healthchecks_ask_the_grpc_health_service(compose, conventions):
    for service in conventions.services:
        check = compose["services"][service]["healthcheck"]
        assert check["test"] == [*HEALTHCHECK, str(conventions.grpc_ports[service])], service


def test_services_start_after_their_dependencies_are_healthy(compose, conventions):
    services = compose["services"]
    for service in conventions.services:
        depends_on = services[service]["depends_on"]
        assert depends_on["kafka"]["condition"] == "service_healthy"
        assert depends_on["postgres"]["condition"] == "service_healthy"
        assert depends_on["minio-buckets"]["condition"] == "service_completed_successfully"
        for dependency, rule in depends_on.items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{service} waits on {dependency}, which has no healthcheck"
    for scorer in ("ingest", "registry"):
        assert services[scorer]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_services_publish_their_grpc_ports(compose_ports, conventions):
    for service in conventions.services:
        port = conventions.grpc_ports[service]
        assert (port, port) in {(p.host_port, p.container_port) for p in compose_ports[service]}, service


def test_every_published_port_binds_to_the_loopback_default(compose_ports, published_ports, repo):
    # Nothing is reachable from another machine unless the operator says so (README).
    assert compose_ports, "the scan found no published ports"
    for name, ports in compose_ports.items():
        for port in ports:
            assert port.host_ip == PUBLISH_HOST, f"{name} publishes {port.host_port} on {port.host_ip or 'every interface'}"
    cluster = yaml.safe_load((repo / "deploy/compose/kafka-cluster.yml").read_text())["services"]
    for name in ("kafka-2", "kafka-3"):
        for port in published_ports(cluster[name]):
            assert port.host_ip == PUBLISH_HOST, f"kafka-cluster.yml: {name} publishes {port.host_port} on {port.host_ip}"


def test_the_loopback_check_catches_a_port_on_every_interface(published_ports):
    (port,) = published_ports({"ports": ["9092:9094"]})
    assert port.host_ip is None
    (port,) = published_ports({"ports": [f"{PUBLISH_HOST}:9092:9094"]})
    assert (port.host_ip, port.host_port, port.container_port) == (PUBLISH_HOST, 9092, 9094)


def test_the_plant_gateway_override_opens_only_kafka_and_ingest(repo, compose, conventions, published_ports):
    override = yaml.safe_load((repo / "deploy/compose/plant-gateways.yml").read_text())["services"]
    assert set(override) == {"kafka", "ingest"}
    kafka = published_ports(override["kafka"])
    ingest = published_ports(override["ingest"])
    assert [(p.host_port, p.container_port) for p in ingest] == [(conventions.grpc_ports["ingest"],) * 2]
    external = re.search(r"EXTERNAL://:(\d+)", compose["services"]["kafka"]["environment"]["KAFKA_LISTENERS"]).group(1)
    assert [p.container_port for p in kafka] == [int(external)]
    for port in kafka + ingest:
        assert port.host_ip.startswith("${LINELOOP_GATEWAY_PUBLISH_HOST:?"), port
    # Kafka sends clients to the address it advertises: the one it is published on.
    advertised = override["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"EXTERNAL://{kafka[0].host_ip}:{kafka[0].host_port}" in advertised


def test_host_ports_are_the_embedded_defaults(compose_ports, compose, conventions):
    # A CLI on the host with the README defaults talks to this stack as to the embedded one.
    published = {port.host_port: (name, port.container_port) for name, ports in compose_ports.items() for port in ports}
    defaults = conventions.defaults
    expected = {
        "LINELOOP_KAFKA_BOOTSTRAP": ("kafka", None),
        "LINELOOP_S3_ENDPOINT": ("minio", 9000),
        "LINELOOP_TRITON_GRPC": ("triton", 8001),
        "LINELOOP_TRITON_HTTP": ("triton", 8000),
    }
    for setting, (service, container_port) in expected.items():
        address = urlsplit(defaults[setting] if "://" in defaults[setting] else f"tcp://{defaults[setting]}")
        assert address.port in published, f"nothing published on {setting}'s default port {address.port}"
        assert published[address.port][0] == service
        if container_port is not None:
            assert published[address.port][1] == container_port
    kafka = compose["services"]["kafka"]["environment"]
    external_port = published[urlsplit(f"tcp://{defaults['LINELOOP_KAFKA_BOOTSTRAP']}").port][1]
    assert f"EXTERNAL://:{external_port}" in kafka["KAFKA_LISTENERS"]
    assert re.search(r"EXTERNAL://\$\{LINELOOP_KAFKA_ADVERTISED_HOST:-127\.0\.0\.1\}:9092", kafka["KAFKA_ADVERTISED_LISTENERS"])


def test_services_write_only_to_data_and_tmp(compose, conventions):
    for service in conventions.services:
        definition = compose["services"][service]
        assert definition["read_only"] is True
        assert "/tmp" in definition["tmpfs"]
        # Read-only mounts (the auth folder) are fine; the only writable one is /data.
        assert [volume.split(":")[1] for volume in definition["volumes"] if not volume.endswith(":ro")] == ["/data"]


def test_bucket_job_creates_the_readme_buckets(compose, conventions):
    job = compose["services"]["minio-buckets"]
    created = {target.split("/", 1)[1] for target in job["command"] if target.startswith("lineloop/")}
    assert created == set(conventions.buckets)
    assert "--ignore-existing" in job["command"]
    alias = urlsplit(job["environment"]["MC_HOST_lineloop"])
    assert (alias.hostname, alias.port) == ("minio", 9000)


def test_kafka_runs_kraft_with_a_healthcheck(compose, conventions):
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    partitions = compose["services"]["ingest"]["environment"]["LINELOOP_TOPIC_PARTITIONS"]
    assert env["KAFKA_NUM_PARTITIONS"] == partitions
    assert "kafka-broker-api-versions.sh" in kafka["healthcheck"]["test"][1]


def test_triton_serves_the_s3_repository_on_a_gpu(compose):
    triton = compose["services"]["triton"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", triton["image"])
    command = triton["command"]
    assert "--model-control-mode=explicit" in command
    # Triton's S3 form carries the endpoint's scheme: s3://http://host:port/bucket.
    repository = f"s3://{compose['services']['ingest']['environment']['LINELOOP_S3_ENDPOINT']}/{bucket('triton')}"
    assert f"--model-repository={repository}" in command
    registry = compose["services"]["registry"]["environment"]
    assert registry["LINELOOP_TRITON_REPOSITORY"] == repository, "the registry writes where Triton reads"
    assert registry["LINELOOP_REGISTRY_TRITON_FLAVOUR"] == "onnxruntime_onnx"
    env = triton["environment"]
    shared = compose["services"]["ingest"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"] == shared["LINELOOP_S3_ACCESS_KEY"]
    assert env["AWS_SECRET_ACCESS_KEY"] == shared["LINELOOP_S3_SECRET_KEY"]
    assert env["AWS_DEFAULT_REGION"] == shared["LINELOOP_S3_REGION"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_third_party_images_are_pinned(compose):
    for name, definition in compose["services"].items():
        if "build" in definition:
            continue
        image = definition["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"


def test_bind_mounted_files_exist(compose, repo):
    for name, definition in compose["services"].items():
        for volume in definition.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (repo / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_every_service_and_triton(compose, conventions, repo):
    config = yaml.safe_load((repo / "deploy/compose/prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    for service in conventions.services:
        assert f"{service}:{conventions.metrics_ports[service]}" in targets
    assert "triton:8002" in targets
    for target in targets:
        assert target.split(":")[0] in compose["services"], f"scrape target {target} is not a compose service"


def test_otel_collector_pipelines_are_complete(compose, repo):
    config = yaml.safe_load((repo / "deploy/compose/otel-collector.yaml").read_text())
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"pipeline {name} uses undefined {kind[:-1]} {component}"
    assert "traces" in config["service"]["pipelines"]
    jaeger = config["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0]
    assert jaeger in compose["services"]
    otlp_port = int(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1])
    service_endpoint = urlsplit(compose["services"]["ingest"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert (service_endpoint.hostname, service_endpoint.port) == ("otel-collector", otlp_port)


def test_grafana_is_provisioned_with_the_lineloop_dashboard(compose, repo):
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provisioning = repo / "deploy/compose/grafana/provisioning"
    datasources = yaml.safe_load((provisioning / "datasources/lineloop.yaml").read_text())["datasources"]
    uids = {source["uid"]: source for source in datasources}
    assert {source["type"] for source in datasources} == {"prometheus", "jaeger"}
    for source in datasources:
        assert urlsplit(source["url"]).hostname in compose["services"]

    providers = yaml.safe_load((provisioning / "dashboards/lineloop.yaml").read_text())["providers"]
    dashboard_dir = providers[0]["options"]["path"]
    host_dir = next(source for source, target in mounts.items() if target == dashboard_dir)
    dashboards = list((repo / host_dir).glob("*.json"))
    assert dashboards, f"no dashboard JSON under {host_dir}"

    dashboard = json.loads((repo / host_dir / "lineloop-overview.json").read_text())
    expressions = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids
        assert panel["targets"], panel["title"]
        expressions += [target["expr"] for target in panel["targets"]]
    joined = "\n".join(expressions)
    for metric in (
        "lineloop_events_consumed_total",
        "lineloop_events_published_total",
        "kafka_consumergroup_lag",
        "lineloop_handler_duration_seconds_bucket",
        "lineloop_monitor_drift_score",
        "lineloop_monitor_live_accuracy",
    ):
        assert metric in joined, f"dashboard has no panel on {metric}"


def test_dashboard_queries_only_metrics_the_code_exports(repo, exported_metrics):
    exported = exported_metrics
    dashboard = json.loads((repo / "deploy/compose/grafana/dashboards/lineloop-overview.json").read_text())
    queried = {
        metric
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for metric in re.findall(r"\b(lineloop_[a-z0-9_]+)", target["expr"])
    }
    assert queried, "the dashboard queries no lineloop metric"
    assert queried <= exported, f"no instrument exports {sorted(queried - exported)}"


def test_postgres_init_script_gives_each_service_its_own_database(compose, repo, postgres):
    from lineloop.stack.postgres import HOST, SUPERUSER

    script = repo / "deploy/compose/postgres/init-databases.sh"
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["postgres"]["volumes"])
    assert mounts[f"./{script.relative_to(repo)}"].startswith("/docker-entrypoint-initdb.d/")

    # Unique names: the session's cluster is shared with other tests.
    suffix = uuid.uuid4().hex[:8]
    names = [f"{service}_{suffix}" for service in compose["services"]["postgres"]["environment"]["LINELOOP_DATABASES"].split()]
    env = {
        "PATH": f"{postgres.bin_dir}:{os.environ['PATH']}",
        "PGHOST": HOST,
        "PGPORT": str(postgres.port),
        "POSTGRES_USER": SUPERUSER,
        "LINELOOP_DATABASES": " ".join(names),
        "LINELOOP_DATABASE_PASSWORD": "test-password",
    }
    try:
        result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        with psycopg.connect(postgres.admin_dsn(), autocommit=True) as admin:
            owners = dict(
                admin.execute(
                    "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba"
                    " WHERE d.datname = ANY(%s)",
                    (names,),
                ).fetchall()
            )
            assert owners == {name: name for name in names}
            other, own = names[0], names[1]
            can_connect = admin.execute(
                "SELECT has_database_privilege(%s, %s, 'CONNECT'), has_database_privilege(%s, %s, 'CONNECT')",
                (own, own, own, other),
            ).fetchone()
            assert can_connect == (True, False)
    finally:
        with psycopg.connect(postgres.admin_dsn(), autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.execute(f'DROP ROLE IF EXISTS "{name}"')


def test_credential_defaults_are_the_readme_defaults(repo, conventions):
    # The compose file substitutes ${NAME:-default}; its defaults must be the documented ones.
    text = (repo / "docker-compose.yml").read_text()
    for setting in ("LINELOOP_S3_ACCESS_KEY", "LINELOOP_S3_SECRET_KEY", "LINELOOP_S3_REGION"):
        defaults = set(re.findall(rf"\$\{{{setting}:-([^}}]*)\}}", text))
        assert defaults == {conventions.defaults[setting]}, f"{setting} defaults to {defaults}"


def test_one_broker_gets_1_1_replication_and_the_kafka_cluster_override_3_2(compose, conventions, repo):
    brokers = [name for name, d in compose["services"].items() if d.get("image", "").startswith("apache/kafka:")]
    assert brokers == ["kafka"]
    for service in conventions.services:
        env = compose["services"][service]["environment"]
        assert (env["LINELOOP_TOPIC_REPLICATION_FACTOR"], env["LINELOOP_TOPIC_MIN_INSYNC_REPLICAS"]) == ("1", "1")

    cluster = yaml.safe_load((repo / "deploy/compose/kafka-cluster.yml").read_text())["services"]
    node_ids = {"kafka": compose["services"]["kafka"]["environment"]["KAFKA_NODE_ID"]}
    node_ids |= {name: cluster[name]["environment"]["KAFKA_NODE_ID"] for name in ("kafka-2", "kafka-3")}
    assert sorted(node_ids.values()) == ["1", "2", "3"]
    for name in node_ids:
        env = cluster[name]["environment"]
        voters = {v.split("@")[1].split(":")[0] for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")}
        assert voters == set(node_ids), name
        assert (env["KAFKA_DEFAULT_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2"), name
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
    for service in conventions.services:
        env = cluster[service]["environment"]
        assert (env["LINELOOP_TOPIC_REPLICATION_FACTOR"], env["LINELOOP_TOPIC_MIN_INSYNC_REPLICAS"]) == ("3", "2")
        assert set(env["LINELOOP_KAFKA_BOOTSTRAP"].split(",")) == {f"{n}:9092" for n in node_ids}, service
        assert {"kafka-2", "kafka-3"} <= set(cluster[service]["depends_on"]), service


def test_brokers_take_the_record_limit_and_only_services_create_topics(compose, repo):
    cluster = yaml.safe_load((repo / "deploy/compose/kafka-cluster.yml").read_text())["services"]
    for env in (compose["services"]["kafka"]["environment"], cluster["kafka-2"]["environment"],
                cluster["kafka-3"]["environment"]):
        assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == MAX_RECORD_BYTES
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_readme_states_the_frame_size_limits_the_code_enforces(repo):
    readme = " ".join((repo / "README.md").read_text().split())
    assert f"at most 1 MiB ({MAX_INLINE_IMAGE_BYTES} bytes) before base64" in readme
    assert f"`max.message.bytes` {MAX_RECORD_BYTES}" in readme
    assert f"`-X message.max.bytes={MAX_RECORD_BYTES}`" in readme


def test_services_require_tokens_and_mount_only_the_service_folder(compose, conventions):
    """Issue 11: the API is closed unless an operator opens it; the issuer's private key never reaches a service."""
    for service in conventions.services:
        definition = compose["services"][service]
        assert definition["environment"]["LINELOOP_AUTH_MODE"] == "${LINELOOP_AUTH_MODE:-required}"
        [auth] = [v for v in definition["volumes"] if "/run/lineloop-auth" in v]
        assert auth.endswith("/service:/run/lineloop-auth:ro")
        assert definition["environment"]["LINELOOP_AUTH_JWKS_FILE"].startswith("/run/lineloop-auth/")
        assert definition["environment"]["LINELOOP_TOKEN_FILE"].startswith("/run/lineloop-auth/")
