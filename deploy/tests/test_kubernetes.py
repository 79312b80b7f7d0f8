"""deploy/k8s: the Kustomize base, the autoscaling component and the dev/production overlays.

Rendered with `kubectl kustomize`; built-in kinds are validated offline against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail). KEDA's
ScaledObject is a custom resource with no schema here, so its required fields (those of the
keda.sh/v1alpha1 CRD) are checked below by hand."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from lineloop.bus import kafka_group_id
from lineloop.contracts.catalogue import CATALOGUE
from lineloop.monitor.settings import MonitorSettings

KUBERNETES_VERSION = "1.32.0"
RENDERS = ("base", "overlays/dev", "overlays/production")
KEDA_API = "keda.sh/v1alpha1"


@pytest.fixture(scope="module")
def rendered(repo) -> dict[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: it renders the Kustomize overlays offline")
    out = {}
    for target in RENDERS:
        result = subprocess.run(
            [kubectl, "kustomize", str(repo / "deploy/k8s" / target)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"kubectl kustomize {target}: {result.stderr}"
        out[target] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def _objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _config(docs: list[dict]) -> dict[str, str]:
    return _objects(docs, "ConfigMap")["lineloop-config"]["data"]


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("target", RENDERS)
def test_builtin_objects_match_the_kubernetes_schemas(rendered, target):
    for doc in rendered[target]:
        if doc["apiVersion"] == KEDA_API:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_an_unknown_field(rendered):
    deployment = dict(_objects(rendered["base"], "Deployment")["ingest"])
    broken = yaml.safe_load(yaml.safe_dump(deployment).replace("readOnlyRootFilesystem", "readOnlyRootFS"))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("target", RENDERS)
def test_every_service_has_deployment_service_and_account(rendered, conventions, target):
    docs = rendered[target]
    for kind in ("Deployment", "Service", "ServiceAccount"):
        assert set(conventions.services) <= set(_objects(docs, kind)), f"{target}: a service lacks its {kind}"


# Services with a web page besides gRPC and metrics: the monitor's dashboard, on its default port.
HTTP_PORTS = {"monitor": {"http": MonitorSettings.model_fields["http_port"].default}}


@pytest.mark.parametrize("target", RENDERS)
def test_deployments_probe_grpc_health_and_expose_metrics(rendered, conventions, target):
    docs = rendered[target]
    services = _objects(docs, "Service")
    for name in conventions.services:
        deployment = _objects(docs, "Deployment")[name]
        container = _container(deployment)
        grpc, metrics = conventions.grpc_ports[name], conventions.metrics_ports[name]
        expected = {"grpc": grpc, "metrics": metrics, **HTTP_PORTS.get(name, {})}
        assert {port["name"]: port["containerPort"] for port in container["ports"]} == expected
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc, f"{name} {probe}"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(metrics)
        service_ports = {port["name"]: port["port"] for port in services[name]["spec"]["ports"]}
        assert service_ports == expected
        selector = services[name]["spec"]["selector"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"Service {name} does not select its pods"


@pytest.mark.parametrize("target", RENDERS)
def test_pods_are_non_root_with_a_read_only_root(rendered, conventions, target):
    for name in conventions.services:
        pod = _objects(rendered[target], "Deployment")[name]["spec"]["template"]["spec"]
        container = _container(_objects(rendered[target], "Deployment")[name])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["serviceAccountName"] == name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        writable = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"] if not mount.get("readOnly")}
        assert set(writable) == {"/data", "/tmp"}, f"{name} writes to {sorted(writable)}"
        assert all("emptyDir" in volumes[volume] for volume in writable.values())
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}: {bound}"


@pytest.mark.parametrize("target", RENDERS)
def test_environment_follows_the_readme(rendered, conventions, target):
    docs = rendered[target]
    config = _config(docs)
    # Credentials come from Secrets; every other shared setting from the ConfigMap.
    credentials = {"LINELOOP_S3_ACCESS_KEY", "LINELOOP_S3_SECRET_KEY"}
    assert set(config) == set(conventions.shared_env) - credentials
    assert config["LINELOOP_STATE_DIR"] == "/data"
    for name in conventions.services:
        container = _container(_objects(docs, "Deployment")[name])
        assert container["envFrom"] == [{"configMapRef": {"name": "lineloop-config"}}]
        env = {item["name"]: item for item in container["env"]}
        prefix = f"LINELOOP_{name.upper()}_"
        assert conventions.service_env(name) | credentials <= set(env), name
        # Beyond the shared settings, a service reads only its own prefix.
        unknown = {key for key in set(env) - credentials if not key.startswith(prefix)}
        assert not unknown, f"{name} gets settings it does not read: {unknown}"
        for key, item in env.items():
            address = re.fullmatch(r"([a-z]+):(\d+)", item.get("value", ""))
            if address and address.group(1) in conventions.grpc_ports:
                assert int(address.group(2)) == conventions.grpc_ports[address.group(1)], f"{name}: {key}"
        assert env[prefix + "GRPC_PORT"]["value"] == str(conventions.grpc_ports[name])
        assert env[prefix + "METRICS_PORT"]["value"] == str(conventions.metrics_ports[name])
        for secret_env in credentials | {prefix + "DATABASE_URL"}:
            assert "secretKeyRef" in env[secret_env]["valueFrom"], f"{name}: {secret_env} must come from a Secret"


def _secret_templates(repo: Path) -> dict[str, set[str]]:
    return {
        doc["metadata"]["name"]: set(doc["stringData"])
        for doc in yaml.safe_load_all((repo / "deploy/k8s/base/secrets.yaml").read_text())
        if doc
    }


def test_secret_templates_cover_every_reference(rendered, repo):
    templates = _secret_templates(repo)
    for target, docs in rendered.items():
        for deployment in _objects(docs, "Deployment").values():
            name = deployment["metadata"]["name"]
            for item in _container(deployment).get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in templates.get(ref["name"], set()), (
                        f"{target}: {name} reads {ref['name']}/{ref['key']}, no template"
                    )
            for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in templates, f"{target}: {name} mounts an untemplated Secret"


def test_production_compilers_share_the_signing_key(rendered, repo):
    deployment = _objects(rendered["overlays/production"], "Deployment")["compiler"]
    container = _container(deployment)
    key_file = Path({item["name"]: item.get("value") for item in container["env"]}["LINELOOP_COMPILER_SIGNING_KEY_FILE"])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == key_file.parent)
    assert mount["readOnly"] is True
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert key_file.name in _secret_templates(repo)[volume["secret"]["secretName"]]


def test_dev_fills_the_secrets_and_production_leaves_them_out(rendered):
    dev_secrets = _objects(rendered["overlays/dev"], "Secret")
    assert dev_secrets, "dev renders the Secrets with dev credentials"
    for name, secret in dev_secrets.items():
        assert "REPLACE_ME" not in secret["stringData"].values(), f"dev Secret {name} still holds the placeholder"
    for name, secret in dev_secrets.items():
        if name.endswith("-database"):
            service = name.removeprefix("lineloop-").removesuffix("-database")
            assert urlsplit(secret["stringData"]["url"]).path == f"/{service}"
    assert not _objects(rendered["overlays/production"], "Secret")


def test_images_match_the_compose_images(rendered, compose, conventions):
    for target, docs in rendered.items():
        for name in conventions.services:
            image = _container(_objects(docs, "Deployment")[name])["image"]
            assert image.split(":")[0] == compose["services"][name]["image"].split(":")[0], f"{target}: {name}"


def _check_scaled_object(scaled: dict, deployments: dict, config: dict) -> None:
    """The keda.sh/v1alpha1 ScaledObject CRD's required fields, plus lineloop's rules."""
    name = scaled["metadata"]["name"]
    spec = scaled["spec"]
    assert isinstance(spec["scaleTargetRef"]["name"], str)
    assert spec["scaleTargetRef"]["name"] in deployments, f"{name} scales a missing Deployment"
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    for field in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        if field in spec:
            assert isinstance(spec[field], int), f"{name}: {field} must be an integer"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # More consumers than partitions would sit idle.
    assert spec["maxReplicaCount"] <= int(config["LINELOOP_TOPIC_PARTITIONS"])
    assert spec["triggers"], f"{name} has no trigger"
    for trigger in spec["triggers"]:
        assert isinstance(trigger["type"], str)
        assert all(isinstance(value, str) for value in trigger["metadata"].values()), f"{name}: metadata values are strings"
    kafka = [trigger for trigger in spec["triggers"] if trigger["type"] == "kafka"]
    assert kafka, f"{name}: a kafka trigger"
    for metadata in (trigger["metadata"] for trigger in kafka):  # one per topic: groups are <service>.<topic>
        group = CATALOGUE.service(spec["scaleTargetRef"]["name"]).consumer_group
        assert metadata["consumerGroup"] == kafka_group_id(group, metadata["topic"])
        assert metadata["bootstrapServers"] == config["LINELOOP_KAFKA_BOOTSTRAP"]
        assert metadata.get("allowIdleConsumers", "false") == "false"
    if any(trigger["type"] in ("cpu", "memory") for trigger in spec["triggers"]):
        container = _container(deployments[spec["scaleTargetRef"]["name"]])
        assert "cpu" in container["resources"]["requests"], f"{name}: a CPU trigger needs CPU requests"


def test_production_scales_every_consumer_on_kafka_lag(rendered, conventions):
    docs = rendered["overlays/production"]
    deployments = _objects(docs, "Deployment")
    scaled_objects = [doc for doc in docs if doc["apiVersion"] == KEDA_API]
    assert {doc["kind"] for doc in scaled_objects} == {"ScaledObject"}
    # Every service consumes in its own group, so every one scales on its lag.
    assert {doc["spec"]["scaleTargetRef"]["name"] for doc in scaled_objects} == set(conventions.services)
    for scaled in scaled_objects:
        _check_scaled_object(scaled, deployments, _config(docs))
        # One kafka trigger per topic the catalogue says the service consumes, none for others.
        topics = [t["metadata"]["topic"] for t in scaled["spec"]["triggers"] if t["type"] == "kafka"]
        assert topics == list(CATALOGUE.service(scaled["spec"]["scaleTargetRef"]["name"]).consumes)


def test_the_scaled_object_check_catches_a_mismatch(rendered):
    docs = rendered["overlays/production"]
    scaled = yaml.safe_load(yaml.safe_dump(_objects(docs, "ScaledObject")["ingest"]))
    scaled["spec"]["maxReplicaCount"] = 4
    with pytest.raises(AssertionError):
        _check_scaled_object(scaled, _objects(docs, "Deployment"), _config(docs))


@pytest.mark.parametrize("target", RENDERS)
def test_one_owner_for_each_replica_count(rendered, target):
    docs = rendered[target]
    keda = {doc["spec"]["scaleTargetRef"]["name"] for doc in docs if doc["kind"] == "ScaledObject"}
    hpa = {doc["spec"]["scaleTargetRef"]["name"] for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"}
    assert not keda & hpa, f"{target}: KEDA and an HPA both scale {keda & hpa}"
    for doc in docs:
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["maxReplicas"] <= int(_config(docs)["LINELOOP_TOPIC_PARTITIONS"])
            assert [metric["resource"]["name"] for metric in doc["spec"]["metrics"]] == ["cpu"]
    for name, deployment in _objects(docs, "Deployment").items():
        if name in keda | hpa:
            assert "replicas" not in deployment["spec"], f"{target}: {name} is autoscaled and sets replicas"
        elif target != "base":
            assert "replicas" in deployment["spec"], f"{target}: nothing sets the replicas of {name}"


def test_production_autoscales_every_service(rendered, conventions):
    docs = rendered["overlays/production"]
    scaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in docs if doc["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")}
    assert scaled == set(conventions.services)


def test_production_runs_gpu_work_on_gpu_nodes(rendered):
    docs = rendered["overlays/production"]
    deployments = _objects(docs, "Deployment")
    for name in ("training", "compiler", "triton"):
        pod = deployments[name]["spec"]["template"]["spec"]
        assert _container(deployments[name])["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true", name
        assert any(toleration["key"] == "nvidia.com/gpu" for toleration in pod["tolerations"]), name
    for name in ("ingest", "labeling", "registry", "monitor"):
        assert "nvidia.com/gpu" not in _container(deployments[name])["resources"].get("limits", {}), name


def _expand(value: str, container: dict, config: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion from the container's env and the ConfigMap it reads."""
    known = dict(config) if container.get("envFrom") else {}
    for item in container.get("env", []):
        if "value" in item:
            known[item["name"]] = item["value"]
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            known[item["name"]] = config[item["valueFrom"]["configMapKeyRef"]["key"]]
    return re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: known[m.group(1)], value)


def test_production_triton_serves_the_repository_the_registry_writes(rendered):
    docs = rendered["overlays/production"]
    config = _config(docs)
    triton = _container(_objects(docs, "Deployment")["triton"])
    assert "--model-control-mode=explicit" in triton["args"]
    repository = f"s3://{config['LINELOOP_S3_ENDPOINT']}/{CATALOGUE.bucket('triton')}"
    assert f"--model-repository={repository}" in [_expand(arg, triton, config) for arg in triton["args"]]
    assert config["LINELOOP_TRITON_REPOSITORY"] == repository  # what the registry writes to
    registry = _container(_objects(docs, "Deployment")["registry"])
    registry_env = {item["name"]: item for item in registry["env"]}
    assert registry_env["LINELOOP_REGISTRY_TRITON_FLAVOUR"]["value"] == "onnxruntime_onnx"
    env = {item["name"]: item["valueFrom"] for item in triton["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": "lineloop-s3", "key": "access-key"}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {"name": "lineloop-s3", "key": "secret-key"}
    service_ports = {port["name"]: port["port"] for port in _objects(docs, "Service")["triton"]["spec"]["ports"]}
    grpc_host, grpc_port = config["LINELOOP_TRITON_GRPC"].split(":")
    http_host, http_port = config["LINELOOP_TRITON_HTTP"].split(":")
    assert grpc_host.split(".")[0] == http_host.split(".")[0] == "triton"
    assert (service_ports["grpc"], service_ports["http"]) == (int(grpc_port), int(http_port))


def test_dev_runs_one_replica_without_autoscalers(rendered, conventions):
    docs = rendered["overlays/dev"]
    assert not [doc for doc in docs if doc["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    for name in conventions.services:
        assert _objects(docs, "Deployment")[name]["spec"]["replicas"] == 1


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/production"])
def test_overlays_put_everything_in_their_namespace(rendered, target):
    docs = rendered[target]
    (namespace,) = _objects(docs, "Namespace")
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, f"{doc['kind']} {doc['metadata']['name']}"


def test_production_keeps_a_pod_of_each_replicated_service_during_drains(rendered):
    docs = rendered["overlays/production"]
    floors = {doc["spec"]["scaleTargetRef"]["name"]: doc["spec"]["minReplicaCount"] for doc in docs if doc["kind"] == "ScaledObject"}
    floors |= {doc["spec"]["scaleTargetRef"]["name"]: doc["spec"]["minReplicas"] for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"}
    budgets = _objects(docs, "PodDisruptionBudget")
    deployments = _objects(docs, "Deployment")
    for name, floor in floors.items():
        if floor < 2:
            continue
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert covering, f"{name} runs {floor} replicas with no PodDisruptionBudget"
        assert all(b["spec"]["minAvailable"] < floor for b in covering), f"{name}: a budget that blocks every drain"


@pytest.mark.parametrize(("target", "replicas", "insync"),
                         [("base", "3", "2"), ("overlays/production", "3", "2"), ("overlays/dev", "1", "1")])
def test_topics_are_replicated_3_2_except_on_a_laptop_cluster(rendered, target, replicas, insync):
    # acks=all protects a record only on more than one replica; dev's single broker cannot hold 3.
    config = _config(rendered[target])
    assert (config["LINELOOP_TOPIC_REPLICATION_FACTOR"], config["LINELOOP_TOPIC_MIN_INSYNC_REPLICAS"]) == (replicas, insync)
    assert int(insync) <= int(replicas)


def test_production_requires_tokens_and_dev_says_it_does_not(rendered, conventions):
    """Issue 11: production gRPC APIs need tokens; keys and the service token come read-only from lineloop-auth."""
    assert _config(rendered["overlays/production"])["LINELOOP_AUTH_MODE"] == "required"
    assert _config(rendered["overlays/dev"])["LINELOOP_AUTH_MODE"] == "off"
    for target in RENDERS:
        config = _config(rendered[target])
        for name in conventions.services:
            deployment = _objects(rendered[target], "Deployment")[name]
            mount = next(m for m in _container(deployment)["volumeMounts"] if m["name"] == "auth")
            assert mount["readOnly"] is True
            for setting in ("LINELOOP_AUTH_JWKS_FILE", "LINELOOP_TOKEN_FILE"):
                assert Path(config[setting]).parent == Path(mount["mountPath"]), f"{target}: {name} {setting}"
            [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth"]
            assert volume["secret"]["secretName"] == "lineloop-auth"
