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
from lineloop.contracts.access import METHOD_ROLES
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


# ---- NetworkPolicies (generated by deploy/k8s/network_policies.py) ---------------------------

OVERLAYS = ("overlays/dev", "overlays/production")
# Peers a gRPC port may never be opened to: every pod of every namespace, or every address.
OPEN_TO_ALL = ({}, {"namespaceSelector": {}}, {"namespaceSelector": {}, "podSelector": {}})


def _policies(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == "NetworkPolicy"]


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches `labels`."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                   "Exists": key in labels, "DoesNotExist": key not in labels}[operator]
        if not matched:
            return False
    return True


def _pod_labels(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {name: d["spec"]["template"]["metadata"]["labels"] for name, d in _objects(docs, "Deployment").items()}


def _workload_ports(docs: list[dict]) -> dict[str, dict[str, int]]:
    """Port name -> number of each workload, as its Service declares them."""
    return {name: {port["name"]: port["port"] for port in service["spec"]["ports"]}
            for name, service in _objects(docs, "Service").items()}


def _rules_for(docs: list[dict], workload: str, direction: str) -> list[dict]:
    """The ingress or egress rules of every policy that selects `workload`'s pods."""
    labels = _pod_labels(docs)[workload]
    return [rule for policy in _policies(docs) if _selects(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get(direction, [])]


def _allows(rules: list[dict], peer: str, port: int, docs: list[dict], key: str = "from") -> bool:
    """Whether some rule lets workload `peer`'s pods (same namespace) through on TCP `port`."""
    labels = _pod_labels(docs)[peer]
    for rule in rules:
        if not any(p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in rule.get("ports", [])):
            continue
        if any(set(p) == {"podSelector"} and _selects(p["podSelector"], labels) for p in rule.get(key, [])):
            return True
    return False


@pytest.mark.parametrize("target", OVERLAYS)
def test_each_overlay_denies_everything_in_its_namespace_by_default(rendered, target):
    docs = rendered[target]
    (namespace,) = _objects(docs, "Namespace")
    deny = [p for p in _policies(docs) if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny, f"{target}: no default-deny NetworkPolicy"
    assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and p["metadata"]["namespace"] == namespace
               for p in deny), f"{target}: the default-deny must cover ingress and egress in {namespace}"


@pytest.mark.parametrize("target", RENDERS)
def test_every_pod_is_selected_by_a_policy_of_its_own(rendered, target):
    # Beyond the default-deny, each workload has a policy that opens exactly its edges.
    docs = rendered[target]
    for name, labels in _pod_labels(docs).items():
        own = [p for p in _policies(docs) if p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"], labels)]
        assert own, f"{target}: no NetworkPolicy selects the pods of {name}"
        assert all(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in own), name


@pytest.mark.parametrize("target", RENDERS)
def test_ingress_opens_only_the_ports_a_workload_serves(rendered, target):
    docs = rendered[target]
    ports = _workload_ports(docs)
    for name in _pod_labels(docs):
        served = set(CATALOGUE.service(name).ports.values()) if name in CATALOGUE.services else set(ports[name].values())
        for rule in _rules_for(docs, name, "ingress"):
            assert rule.get("ports"), f"{target}: an ingress rule opens every port of {name}"
            opened = {port["port"] for port in rule["ports"]}
            assert opened <= served, f"{target}: {name} opens {sorted(opened - served)}, not its ports {sorted(served)}"


@pytest.mark.parametrize("target", RENDERS)
def test_no_grpc_port_is_open_to_everyone(rendered, target):
    docs = rendered[target]
    for name, ports in _workload_ports(docs).items():
        for rule in _rules_for(docs, name, "ingress"):
            if ports["grpc"] not in {port["port"] for port in rule.get("ports", [])}:
                continue
            peers = rule.get("from", [])
            assert peers, f"{target}: {name}'s gRPC port is open to every address"
            for peer in peers:
                assert peer not in OPEN_TO_ALL, f"{target}: {name}'s gRPC port is open to {peer}"
                assert "ipBlock" not in peer or peer["ipBlock"]["cidr"] not in ("0.0.0.0/0", "::/0"), (target, name)


@pytest.mark.parametrize("target", RENDERS)
def test_callers_from_outside_come_only_from_their_namespaces(rendered, target):
    docs = rendered[target]
    # Services with an rpc a gateway may call: ingest (UploadFrames) and the registry (rollout reads).
    gateway_services = {method.lstrip("/").split("/")[0].removeprefix("lineloop.v1.").removesuffix("Service").lower()
                        for method, roles in METHOD_ROLES.items() if "gateway" in roles}
    assert gateway_services == {"ingest", "registry"}
    for name, entry in CATALOGUE.services.items():
        by_port: dict[int, list[dict]] = {}
        for rule in _rules_for(docs, name, "ingress"):
            for port in rule["ports"]:
                by_port.setdefault(port["port"], []).extend(rule["from"])
        namespaces = {port: [p["namespaceSelector"]["matchLabels"] for p in peers if "namespaceSelector" in p]
                      for port, peers in by_port.items()}
        assert by_port[entry.metrics_port] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        expected = [{"lineloop/gateways": "true"}] * (name in gateway_services) + [{"lineloop/operators": "true"}]
        assert namespaces[entry.grpc_port] == expected, f"{target}: {name}"
        if entry.http_port:
            assert by_port[entry.http_port] == [{"namespaceSelector": {"matchLabels": {"lineloop/operators": "true"}}}]


def _stub_edges(repo: Path) -> set[tuple[str, str]]:
    """(caller, callee) for every lineloop gRPC stub a service's code creates."""
    edges = set()
    for source in repo.glob("services/*/src/**/*.py"):
        caller = source.relative_to(repo / "services").parts[0]
        for stub in re.findall(r"\b([A-Z][a-z]+)ServiceStub\(", source.read_text()):
            callee = stub.lower()
            assert callee in CATALOGUE.services, f"{source}: {stub}ServiceStub is no catalogued service"
            edges.add((caller, callee))
    return edges


def test_the_stub_scan_sees_every_call_site(repo):
    assert ("training", "registry") in _stub_edges(repo), "the scan found no call: did the stubs' names change?"
    # Libraries that create stubs run outside the cluster (the CLI, the gateway simulator) or
    # against their own pod (the container health check); a new one must be mapped here.
    libraries = {source.relative_to(repo / "libs").parts[0] for source in repo.glob("libs/*/src/**/*.py")
                 if "_pb2_grpc" not in source.name and re.search(r"\w+Stub\(", source.read_text())}
    assert libraries <= {"cli", "runtime"}, f"libs {sorted(libraries - {'cli', 'runtime'})} create gRPC stubs"


@pytest.mark.parametrize("target", RENDERS)
def test_every_grpc_call_in_the_code_is_allowed_and_no_other(rendered, repo, target):
    docs = rendered[target]
    edges = _stub_edges(repo)
    for caller, callee in edges:
        port = CATALOGUE.service(callee).grpc_port
        assert _allows(_rules_for(docs, callee, "ingress"), caller, port, docs), f"{target}: {callee} refuses {caller}"
        assert _allows(_rules_for(docs, caller, "egress"), callee, port, docs, "to"), f"{target}: {caller} cannot reach {callee}"
    # No pod-to-pod gRPC edge that the code no longer makes.
    for callee in CATALOGUE.services:
        port = CATALOGUE.service(callee).grpc_port
        allowed = {caller for caller in CATALOGUE.services if _allows(_rules_for(docs, callee, "ingress"), caller, port, docs)}
        assert allowed == {caller for caller, to in edges if to == callee}, f"{target}: {callee} admits {sorted(allowed)}"


def _triton_clients(repo: Path) -> set[str]:
    return {source.relative_to(repo / "services").parts[0] for source in repo.glob("services/*/src/**/*.py")
            if re.search(r"\btritonclient\b|\bTritonControl\(", source.read_text())}


def test_only_the_services_that_call_triton_reach_it(rendered, repo):
    docs = rendered["overlays/production"]
    clients = _triton_clients(repo)
    assert clients == {"ingest", "registry"}, "the scan no longer finds Triton's clients"
    config = _config(docs)
    grpc = int(config["LINELOOP_TRITON_GRPC"].rsplit(":", 1)[1])
    assert _workload_ports(docs)["triton"]["grpc"] == grpc
    for name in CATALOGUE.services:
        admitted = _allows(_rules_for(docs, "triton", "ingress"), name, grpc, docs)
        assert admitted == (name in clients), f"Triton {'refuses' if name in clients else 'admits'} {name}"
        egress = any(grpc in {p["port"] for p in rule.get("ports", [])} for rule in _rules_for(docs, name, "egress"))
        assert egress == (name in clients), f"{name}: egress to Triton's gRPC port"


def _dependency_ports(docs: list[dict], name: str) -> set[int]:
    """The ports a workload must reach: every address in lineloop-config (and PostgreSQL's)."""
    config = _config(docs)
    addresses = [*config["LINELOOP_KAFKA_BOOTSTRAP"].split(","), config["LINELOOP_S3_ENDPOINT"], config["OTEL_EXPORTER_OTLP_ENDPOINT"]]
    ports = {urlsplit(a if "://" in a else f"tcp://{a}").port for a in addresses}
    secrets = _objects(docs, "Secret")
    database = secrets.get(f"lineloop-{name}-database")
    # Production leaves the Secrets out (the operator's); dev and the templates name the port.
    ports.add(urlsplit(database["stringData"]["url"]).port if database and "://" in database["stringData"]["url"] else 5432)
    return ports


@pytest.mark.parametrize("target", RENDERS)
def test_every_service_reaches_dns_and_its_dependencies(rendered, target):
    docs = rendered[target]
    for name in CATALOGUE.services:
        egress = _rules_for(docs, name, "egress")
        dns = [rule for rule in egress if {(p["protocol"], p["port"]) for p in rule.get("ports", [])} == {("UDP", 53), ("TCP", 53)}]
        assert dns and all(rule.get("to") for rule in dns), f"{target}: {name} cannot resolve names (or may ask anyone)"
        reachable = {p["port"] for rule in egress for p in rule.get("ports", []) if p.get("protocol", "TCP") == "TCP"}
        missing = _dependency_ports(docs, name) - reachable
        assert not missing, f"{target}: {name} cannot reach ports {sorted(missing)} of lineloop-config's addresses"
        assert all(rule.get("ports") for rule in egress), f"{target}: {name} may reach every port"


def test_the_schema_check_catches_a_bad_network_policy(rendered):
    (policy,) = [p for p in _policies(rendered["base"]) if p["metadata"]["name"] == "ingest"]
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(policy).replace("policyTypes", "policyType"))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
