"""The build manifest: what a compiled build contains, and its Ed25519 signature.

The compiler writes `manifest.json` under the build prefix and signs its exact bytes; a
gateway checks the bytes against the rollout's sha256, the signature against a public key
it already trusts (never one fetched beside the build), then every artifact's sha256
against the manifest. The manifest is the single source of truth for a build's files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SCHEMA = "lineloop.build-manifest/v1"


class ManifestError(Exception):
    """A manifest, signature or artifact that must not be installed; `reason` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Artifact:
    name: str  # file name inside the build (model.onnx, model.plan)
    bucket: str
    key: str
    sha256: str
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class BuildManifest:
    build_id: str
    model_name: str
    version: str
    target: str
    runtime: str
    precision: str
    profile: Mapping[str, Any]
    source: Mapping[str, Any]  # the registered model: onnx ref, run, dataset version
    classes: tuple[str, ...]
    input_size: int
    artifacts: tuple[Artifact, ...]
    verification: Mapping[str, Any]
    built_at: str
    key_id: str

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys): the exact bytes that are stored, hashed and signed."""
        body = dataclasses.asdict(self)
        body["schema"] = SCHEMA
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> BuildManifest:
        try:
            body = json.loads(data)
            if not isinstance(body, dict) or body.pop("schema", None) != SCHEMA:
                raise ValueError(f"schema is not {SCHEMA}")
            body["artifacts"] = tuple(Artifact(**a) for a in body["artifacts"])
            body["classes"] = tuple(body["classes"])
            manifest = cls(**body)
            _check_fields(manifest)
            return manifest
        except (ValueError, TypeError, KeyError, RecursionError) as err:  # RecursionError: JSON nested too deep
            raise ManifestError("manifest_invalid", f"not a {SCHEMA} manifest: {err}") from err

    def artifact(self, name: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        raise ManifestError("manifest_invalid", f"build {self.build_id} has no artifact {name!r}")


# model_name, version and target name the install folder on a gateway: one plain path segment each.
_SEGMENT = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's rule; the client raises ValueError otherwise
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_fields(m: BuildManifest) -> None:
    """Types and names a gateway relies on (found by tests/fuzz: a signed manifest was parsed
    with any JSON type, and a model_name like "../../x" installed outside the install folder)."""
    for name in ("build_id", "model_name", "version", "target", "runtime", "precision", "built_at", "key_id"):
        if not isinstance(getattr(m, name), str):
            raise ValueError(f"{name} is not a string")
    for name in ("model_name", "version", "target"):
        value = getattr(m, name)
        if not _SEGMENT.fullmatch(value) or ".." in value:
            raise ValueError(f"{name} {value[:80]!r} is not 1-128 letters, digits and _.:- (no '..')")
    if not all(isinstance(c, str) for c in m.classes) or isinstance(m.input_size, bool) or not isinstance(m.input_size, int):
        raise ValueError("classes must be strings and input_size an integer")
    if not all(isinstance(getattr(m, n), dict) for n in ("profile", "source", "verification")):
        raise ValueError("profile, source and verification must be objects")
    for a in m.artifacts:
        if not all(isinstance(v, str) for v in (a.name, a.bucket, a.key, a.sha256)) or type(a.size_bytes) is not int:
            raise ValueError(f"artifact {str(a.name)[:80]!r}: name, bucket, key, sha256 are strings, size_bytes an integer")
        if not _BUCKET.fullmatch(a.bucket) or not a.key or not _SHA256.fullmatch(a.sha256):
            raise ValueError(f"artifact {a.name[:80]!r}: bucket {a.bucket[:80]!r}, key {a.key[:80]!r} or sha256 "
                             f"{a.sha256[:80]!r} is not a valid S3 bucket, a key and 64 hex digits")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key: the first 16 hex digits of sha256(raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)[:16]


def sign(private_key: Ed25519PrivateKey, data: bytes) -> bytes:
    return private_key.sign(data)


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_trusted_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """PEM Ed25519 public keys, indexed by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            loaded = serialization.load_pem_public_key(Path(path).read_bytes())
        except ValueError as err:
            raise ValueError(f"{path} is not a PEM public key") from err  # cryptography's message omits the file
        if not isinstance(loaded, Ed25519PublicKey):
            raise ValueError(f"{path} is not an Ed25519 public key")
        keys[key_id(loaded)] = loaded
    return keys


def verify_manifest(
    data: bytes,
    signature: bytes,
    signer_key_id: str,
    trusted: Mapping[str, Ed25519PublicKey],
    expected_sha256: str,
) -> BuildManifest:
    """Check manifest bytes against the announced sha256 and a trusted key's signature.

    Raises:
        ManifestError: reason `manifest_sha256_mismatch`, `unknown_signing_key`,
            `signature_invalid` or `manifest_invalid`.
    """
    actual = sha256_hex(data)
    if actual != expected_sha256.lower():
        raise ManifestError("manifest_sha256_mismatch", f"manifest sha256 is {actual}, rollout says {expected_sha256}")
    public_key = trusted.get(signer_key_id)
    if public_key is None:
        raise ManifestError("unknown_signing_key", f"key {signer_key_id!r} is not among the trusted keys {sorted(trusted)}")
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise ManifestError("signature_invalid", f"Ed25519 signature does not match the manifest (key {signer_key_id})") from None
    manifest = BuildManifest.from_bytes(data)
    if manifest.key_id != signer_key_id:
        raise ManifestError("manifest_invalid", f"manifest names key {manifest.key_id}, signed with {signer_key_id}")
    return manifest


def check_artifact(artifact: Artifact, data: bytes) -> None:
    actual = sha256_hex(data)
    if actual != artifact.sha256:
        raise ManifestError(
            "artifact_sha256_mismatch", f"{artifact.name} ({artifact.bucket}/{artifact.key}) hashes to {actual}, manifest says {artifact.sha256}"
        )
