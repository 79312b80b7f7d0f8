"""Manifest signatures: what a gateway accepts and what it refuses, and why."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineloop.edge.manifest import Artifact, BuildManifest, ManifestError, check_artifact, key_id, sha256_hex, verify_manifest


def _signed():
    key = Ed25519PrivateKey.generate()
    manifest = BuildManifest(
        build_id="b-1", model_name="apples", version="3", target="onnxruntime-cpu-int8", runtime="onnxruntime-cpu",
        precision="int8", profile={"batch_size": 1}, source={"run_id": "r"}, classes=("bruise", "ok"), input_size=96,
        artifacts=(Artifact("model.onnx", "lineloop-builds", "apples/3/x/model.onnx", sha256_hex(b"model"), 5),),
        verification={"passed": True}, built_at="2026-11-22T00:00:00Z", key_id=key_id(key.public_key()),
    )
    data = manifest.to_bytes()
    return key, data, key.sign(data)


def test_a_signed_manifest_verifies_and_round_trips():
    key, data, signature = _signed()
    manifest = verify_manifest(data, signature, key_id(key.public_key()), {key_id(key.public_key()): key.public_key()},
                               sha256_hex(data))
    assert manifest.to_bytes() == data and manifest.artifact("model.onnx").size_bytes == 5
    check_artifact(manifest.artifact("model.onnx"), b"model")


@pytest.mark.parametrize("case, reason", [
    ("edited", "manifest_sha256_mismatch"),
    ("other_key", "unknown_signing_key"),
    ("bad_signature", "signature_invalid"),
])
def test_refusals_say_why(case, reason):
    key, data, signature = _signed()
    kid = key_id(key.public_key())
    trusted = {kid: key.public_key()}
    expected = sha256_hex(data)
    if case == "edited":
        data = data.replace(b'"version":"3"', b'"version":"4"')
    elif case == "other_key":
        kid = key_id(Ed25519PrivateKey.generate().public_key())
    else:
        signature = Ed25519PrivateKey.generate().sign(data)
    with pytest.raises(ManifestError) as err:
        verify_manifest(data, signature, kid, trusted, expected)
    assert err.value.reason == reason


def test_a_tampered_artifact_is_refused():
    _, data, _ = _signed()
    artifact = BuildManifest.from_bytes(data).artifact("model.onnx")
    with pytest.raises(ManifestError, match="artifact_sha256_mismatch"):
        check_artifact(artifact, b"evil")
