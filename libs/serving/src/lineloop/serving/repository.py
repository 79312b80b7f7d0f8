"""Triton model-repository entries: `<repo>/<model>/<version>/<model file>` + `config.pbtxt`.

Three flavours of one model version:
- `python`: the embedded stack's Triton has only the python backend; a `model.py` runs the
  ONNX file with onnxruntime on CPU.
- `onnxruntime_onnx`, `tensorrt_plan`: NVIDIA's Triton image on GPU (compose, Kubernetes).

A repository is a local folder or an S3 prefix (`s3://http://host:port/bucket[/prefix]`, the
form tritonserver's --model-repository takes). The bundled tritonserver 2.51 reads S3
repositories (tried: load from the embedded S3 store works), so the embedded stack serves
from S3 like production does.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from google.protobuf import text_format
from minio import Minio
from tritonclient.grpc import model_config_pb2 as mc

from lineloop.serving.contract import EMBEDDING, INPUT, PROBABILITIES, ContractError, Signature, onnx_signature

LABELS_FILE = "labels.txt"


class Flavour(enum.StrEnum):
    PYTHON = "python"
    ONNXRUNTIME = "onnxruntime_onnx"
    TENSORRT = "tensorrt_plan"

    @property
    def model_filename(self) -> str:
        return "model.plan" if self is Flavour.TENSORRT else "model.onnx"


@dataclasses.dataclass(frozen=True)
class ServingOptions:
    max_batch_size: int = 8
    instance_count: int = 1
    max_queue_delay_us: int = 2000
    # Versions Triton serves at once (production + canary); None: only the newest.
    versions: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.instance_count < 1:
            raise ValueError(f"instance_count must be >= 1, got {self.instance_count}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")


def model_config(
    triton_model: str,
    flavour: Flavour,
    signature: Signature,
    options: ServingOptions,
    with_labels: bool,
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=triton_model, max_batch_size=options.max_batch_size)
    if flavour is Flavour.PYTHON:
        config.backend = "python"
        kind = mc.ModelInstanceGroup.Kind.KIND_CPU
    else:
        config.platform = flavour.value
        kind = mc.ModelInstanceGroup.Kind.KIND_GPU
    size = signature.input_size
    config.input.append(mc.ModelInput(name=INPUT, data_type=mc.TYPE_FP32, dims=[3, size, size]))
    config.output.append(
        mc.ModelOutput(
            name=PROBABILITIES,
            data_type=mc.TYPE_FP32,
            dims=[signature.num_classes],
            label_filename=LABELS_FILE if with_labels else "",
        )
    )
    config.output.append(mc.ModelOutput(name=EMBEDDING, data_type=mc.TYPE_FP32, dims=[signature.embedding_dim]))
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    config.instance_group.append(mc.ModelInstanceGroup(kind=kind, count=options.instance_count))
    if options.versions:
        config.version_policy.specific.versions.extend(sorted(set(options.versions)))
    else:
        config.version_policy.latest.num_versions = 1
    return config


def write_model_version(
    repository: Path,
    triton_model: str,
    version: int,
    model_file: Path,
    flavour: Flavour | str = Flavour.PYTHON,
    labels: Sequence[str] = (),
    options: ServingOptions = ServingOptions(),
    signature: Signature | None = None,
) -> Path:
    """Write one numbered version of a model and the model's config; returns the model dir.

    ONNX files are checked against the serving contract (their signature is read from the
    file); a TensorRT plan cannot be read without a GPU, so its `signature` must be given.
    The version folder appears whole or not at all (written aside, then renamed), so a
    Triton polling or loading the repository never sees half a model.
    """
    flavour = Flavour(flavour)
    if not triton_model or "/" in triton_model or triton_model.startswith("."):
        raise ValueError(f"invalid Triton model name {triton_model!r}")
    if version < 1:
        raise ValueError(f"Triton versions are positive integers, got {version}")
    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"model file {model_file} does not exist")
    if flavour is Flavour.TENSORRT:
        if signature is None:
            raise ContractError("a TensorRT plan needs its signature given (input size, classes, embedding)")
    else:
        found = onnx_signature(model_file)
        if signature is not None and signature != found:
            raise ContractError(f"model file has {found}, expected {signature}")
        signature = found
    labels = list(labels)
    if labels and len(labels) != signature.num_classes:
        raise ContractError(f"{len(labels)} class labels for {signature.num_classes} probabilities")

    model_dir = Path(repository) / triton_model
    model_dir.mkdir(parents=True, exist_ok=True)
    version_dir = model_dir / str(version)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        shutil.copyfile(model_file, staging / flavour.model_filename)
        if flavour is Flavour.PYTHON:
            template = resources.files("lineloop.serving") / "templates" / "model.py"
            (staging / "model.py").write_text(template.read_text())
        if version_dir.exists():
            shutil.rmtree(version_dir)
        os.rename(staging, version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if labels:
        _write_atomically(model_dir / LABELS_FILE, "".join(f"{label}\n" for label in labels))
    config = model_config(triton_model, flavour, signature, options, with_labels=bool(labels))
    _write_atomically(model_dir / "config.pbtxt", text_format.MessageToString(config))
    return model_dir


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ModelRepository(Protocol):
    url: str  # what tritonserver's --model-repository takes

    def write_model_version(
        self,
        triton_model: str,
        version: int,
        model_file: Path,
        flavour: Flavour | str = Flavour.PYTHON,
        labels: Sequence[str] = (),
        options: ServingOptions = ServingOptions(),
        signature: Signature | None = None,
    ) -> str: ...

    def versions(self, triton_model: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class LocalRepository:
    path: Path

    @property
    def url(self) -> str:
        return str(self.path)

    def write_model_version(self, triton_model: str, version: int, model_file: Path, **kwargs) -> str:
        return str(write_model_version(self.path, triton_model, version, model_file, **kwargs))

    def versions(self, triton_model: str) -> list[int]:
        model_dir = self.path / triton_model
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


@dataclasses.dataclass(frozen=True)
class S3Repository:
    client: Minio
    endpoint: str  # http(s)://host:port
    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        return f"s3://{self.endpoint}/{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def write_model_version(self, triton_model: str, version: int, model_file: Path, **kwargs) -> str:
        """Written locally (and checked) first, then uploaded: version files before the
        labels and config, so a load never finds a config naming a version not there yet."""
        with tempfile.TemporaryDirectory(prefix="lineloop-triton-") as staging:
            model_dir = write_model_version(Path(staging), triton_model, version, model_file, **kwargs)
            files = sorted(p for p in model_dir.rglob("*") if p.is_file())
            last = {model_dir / "config.pbtxt", model_dir / LABELS_FILE}
            for path in [p for p in files if p not in last] + [p for p in files if p in last]:
                key = self._key(triton_model, path.relative_to(model_dir).as_posix())
                self.client.fput_object(self.bucket, key, str(path))
        return f"{self.url}/{triton_model}"

    def versions(self, triton_model: str) -> list[int]:
        prefix = self._key(triton_model) + "/"
        found = set()
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            head = obj.object_name[len(prefix) :].split("/", 1)[0]
            if head.isdigit() and "/" in obj.object_name[len(prefix) :]:
                found.add(int(head))
        return sorted(found)


def open_repository(
    url: str | Path,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str = "us-east-1",
) -> LocalRepository | S3Repository:
    """A repository from the URL Triton is started with: a path or `s3://http://host:port/bucket/prefix`."""
    text = str(url)
    if text.startswith("s3:") and not text.startswith("s3://"):
        # pathlib collapses "s3://http://" to "s3:/http:/": refuse, or it becomes a local folder "s3:".
        raise ValueError(f"{text!r} is an S3 repository URL mangled by a Path(); pass the URL as a str")
    if not text.startswith("s3://"):
        return LocalRepository(Path(text))
    inner = text[len("s3://") :]
    parts = urlsplit(inner)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"S3 repository URL must be s3://http(s)://host:port/bucket[/prefix], got {text!r}")
    bucket, _, prefix = parts.path.lstrip("/").partition("/")
    if not bucket:
        raise ValueError(f"S3 repository URL names no bucket: {text!r}")
    client = Minio(
        parts.netloc,
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        secure=parts.scheme == "https",
    )
    return S3Repository(client=client, endpoint=f"{parts.scheme}://{parts.netloc}", bucket=bucket, prefix=prefix.strip("/"))
