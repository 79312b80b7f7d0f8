"""Files read from outside, fuzzed: Label Studio exports (labeling's gRPC import), dataset
manifests (lineloop.model's reader) and signed build manifests (lineloop.edge's verifier).

Structured mutations of a valid file (a value replaced, a key dropped, a type changed,
deep nesting) and random bytes. Outcome per case: read, or refused with its specific
error (INVALID_ARGUMENT/NOT_FOUND with a message, ManifestError); never another exception,
and a refused import leaves no label behind.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st
from sqlalchemy import func, select

from lineloop.edge.manifest import Artifact, BuildManifest, ManifestError as RolloutManifestError, key_id, sign, verify_manifest
from lineloop.labeling import state as labeling_state
from lineloop.model.manifest import ManifestError, parse_manifest
from lineloop.v1 import labeling_pb2, labeling_pb2_grpc
from tests.fuzz.harness import run_cases, run_cases_async
from tests.fuzz.services import hosted
from tests.fuzz.test_fuzz_handlers import plausible_frame

DEEP = b"[" * 100_000 + b"]" * 100_000
JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                        st.text(max_size=12), st.sampled_from(["", "ok", "bruise", "train", "9999-99-99", "0001-01-01T00:00:00+05:00"]))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)


@st.composite
def mutated(draw, doc):
    """`doc` with one to three structured changes somewhere inside it."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        doc = _mutate_once(draw, doc)
    return doc


def _mutate_once(draw, node):
    children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
    if children and draw(st.integers(0, 3)) > 0:  # usually go deeper
        key, child = draw(st.sampled_from(children))
        node[key] = _mutate_once(draw, child)
        return node
    action = draw(st.sampled_from(["replace", "drop", "wrap", "dup", "empty"]))
    if action == "replace":
        return draw(JSON_VALUES)
    if action == "drop" and children:
        key, _ = draw(st.sampled_from(children))
        del node[key]
        return node
    if action == "wrap":
        return [node] if draw(st.booleans()) else {"x": node}
    if action == "dup" and isinstance(node, list) and node:
        return node + node
    return type(node)() if isinstance(node, (dict, list)) else ""


def raw_and_mutated(valid: bytes, docs: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    cut = st.integers(0, len(valid)).map(lambda n: valid[:n])
    deep = st.integers(1_000, 200_000).map(lambda n: b"[" * n + b"]" * n)
    return st.one_of(docs, docs, docs, cut, deep, st.binary(max_size=256), st.binary(max_size=64).map(lambda b: valid + b))


# ---- dataset manifests (lineloop.model) ------------------------------------------

MANIFEST_ROWS = [
    {"frame_id": f"f-{i}", "key": f"ab/{'a' * 62}{i:02d}.jpg", "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
     "label": "ok" if i % 2 else "bruise", "split": ("train", "val", "test")[i % 3], "camera_id": "cam-1",
     "captured_at": "2026-01-01T00:00:00+00:00", "label_source": "human"}
    for i in range(4)
]
MANIFEST = b"\n".join(json.dumps(r).encode() for r in MANIFEST_ROWS) + b"\n"


def test_valid_manifest_reads_whole():
    assert [e.frame_id for e in parse_manifest(MANIFEST)] == [r["frame_id"] for r in MANIFEST_ROWS]


def test_dataset_manifest_reads_or_is_refused_with_a_manifest_error():
    docs = mutated(MANIFEST_ROWS).map(
        lambda rows: b"\n".join(json.dumps(r).encode() for r in rows) if isinstance(rows, list) else json.dumps(rows).encode())

    def check(data: bytes) -> str:
        try:
            entries = parse_manifest(data)
        except ManifestError as err:
            assert str(err), err
            return "refused"
        assert entries and all(e.split in ("train", "val", "test") and len(e.sha256) == 64 for e in entries)
        return "read"

    run_cases("file:dataset_manifest", raw_and_mutated(MANIFEST, docs), check)


# ---- build manifests a device verifies (lineloop.edge) ----------------------------

SIGNER = Ed25519PrivateKey.generate()
SIGNER_ID = key_id(SIGNER.public_key())
TRUSTED = {SIGNER_ID: SIGNER.public_key()}
BUILD = BuildManifest(
    build_id="b-1", model_name="apples", version="1", target="onnx-cpu", runtime="onnxruntime", precision="fp32",
    profile={"name": "onnx-cpu"}, source={"run_id": "r-1"}, classes=("bruise", "ok"), input_size=64,
    artifacts=(Artifact("model.onnx", "lineloop-builds", "apples/1/model.onnx", "0" * 64, 123),),
    verification={"top1_agreement": 1.0}, built_at="2026-01-01T00:00:00Z", key_id=SIGNER_ID,
)


def test_valid_build_manifest_verifies():
    data = BUILD.to_bytes()
    assert verify_manifest(data, sign(SIGNER, data), SIGNER_ID, TRUSTED, hashlib.sha256(data).hexdigest()) == BUILD


def test_build_manifest_verifies_or_is_refused_with_a_reason():
    """Mutated manifests are signed by the trusted key (a compromised or buggy compiler), so they reach the parser."""
    docs = mutated(json.loads(BUILD.to_bytes())).map(lambda d: json.dumps(d).encode())
    cases = st.tuples(raw_and_mutated(BUILD.to_bytes(), docs), st.sampled_from(["signed", "unsigned", "wrong_sha"]))

    def check(case) -> str:
        data, how = case
        signature = sign(SIGNER, data) if how != "unsigned" else b"\0" * 64
        sha = hashlib.sha256(data).hexdigest() if how != "wrong_sha" else "0" * 64
        try:
            manifest = verify_manifest(data, signature, SIGNER_ID, TRUSTED, sha)
        except RolloutManifestError as err:
            assert err.reason and err.detail, err
            return f"refused:{err.reason}"
        assert how == "signed" and isinstance(manifest, BuildManifest)
        return "verified"

    run_cases("file:build_manifest", cases, check)


# ---- Label Studio exports, imported through labeling's gRPC API ------------------

def label_studio_export(frame_ids: list[str]) -> list[dict]:
    return [
        {"id": i, "data": {"frame_id": fid, "image": "http://x/y.jpg"},
         "annotations": [{"id": 10 + i, "completed_by": {"email": "a@b"}, "created_at": "2026-01-01T00:00:00Z",
                          "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                      "value": {"choices": ["ok"]}}],
                          "meta": {"annotator": "ann"}}]}
        for i, fid in enumerate(frame_ids)
    ]


async def test_label_studio_import_succeeds_or_is_refused_without_a_partial_write(stack, tmp_path):
    async with hosted("labeling", stack, tmp_path) as host:
        line = f"line-{uuid.uuid4().hex[:6]}"
        frames = [plausible_frame(line) for _ in range(3)]
        for frame in frames:
            assert await host.deliver("frames.ingested.v1", frame) == "applied"
        stub = labeling_pb2_grpc.LabelingServiceStub(host.channel)
        export = label_studio_export([f.frame_id for f in frames])
        docs = mutated(export).map(lambda d: json.dumps(d).encode())

        def labels_stored() -> int:
            with host.service.db.transaction() as s:
                return s.execute(select(func.count()).select_from(labeling_state.labels)).scalar_one()

        async def check(data: bytes) -> str:
            before = labels_stored()
            try:
                response = await stub.ImportLabelStudio(labeling_pb2.ImportLabelStudioRequest(export_json=data), timeout=30)
            except grpc.aio.AioRpcError as err:
                assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                      grpc.StatusCode.FAILED_PRECONDITION), (err.code(), err.details())
                assert err.details()
                assert labels_stored() == before, "a refused import stored labels"
                return f"grpc:{err.code().name}"
            assert labels_stored() == before + response.imported
            return "imported" if response.imported else "grpc:OK"

        await run_cases_async("file:label_studio_import", raw_and_mutated(json.dumps(export).encode(), docs), check)

        # A valid export still imports after all of that (some labels may already exist from lucky mutations).
        fresh = [plausible_frame(line) for _ in range(2)]
        for frame in fresh:
            await host.deliver("frames.ingested.v1", frame)
        response = await stub.ImportLabelStudio(labeling_pb2.ImportLabelStudioRequest(
            export_json=json.dumps(label_studio_export([f.frame_id for f in fresh])).encode()))
        assert response.imported == 2


@pytest.mark.parametrize("data", [b"\xff\xfe not utf-8\n", DEEP], ids=["not_utf8", "deep"])
def test_found_by_this_fuzz_a_dataset_manifest_that_raised_is_refused(data):
    """Raised UnicodeDecodeError / RecursionError, which the compiler (catching ManifestError) did not expect."""
    with pytest.raises(ManifestError):
        parse_manifest(data)


@pytest.mark.parametrize("data", [b"[]", b"7", DEEP], ids=["array", "number", "deep"])
def test_found_by_this_fuzz_a_build_manifest_that_raised_is_refused(data):
    """Raised AttributeError / RecursionError past the edge agent's `except ManifestError`."""
    with pytest.raises(RolloutManifestError) as refused:
        verify_manifest(data, sign(SIGNER, data), SIGNER_ID, TRUSTED, hashlib.sha256(data).hexdigest())
    assert refused.value.reason == "manifest_invalid"


def test_found_by_this_fuzz_a_label_studio_file_nested_too_deep_is_invalid_argument():
    """Raised RecursionError: gRPC UNKNOWN."""
    from lineloop.labeling.labels import LabelRejected
    from lineloop.labeling.labelstudio import parse_export

    with pytest.raises(LabelRejected) as refused:
        parse_export(DEEP, ["ok"])
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


# ---- rollouts an edge agent installs (lineloop.edge.agent) --------------------------

def tiny_onnx() -> bytes:
    """A loadable ONNX model (images -> probabilities, embedding); what it computes does not matter here."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["probabilities"]), helper.make_node("Identity", ["images"], ["embedding"])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


async def test_rollout_installs_or_is_refused_without_touching_the_running_model(stack, tmp_path):
    """Rollouts whose manifest is mutated and re-signed by the trusted key (a buggy or hijacked
    compiler): installed, or refused (`Reject` with the ManifestError reason); the model that was
    running stays, and nothing is written outside the agent's install directory."""
    import dataclasses
    import os

    from lineloop.bus import Reject
    from lineloop.edge.agent import EdgeAgent
    from lineloop.storage.objects import ObjectStore
    from lineloop.v1.common_pb2 import ObjectRef
    from lineloop.v1.events_pb2 import EdgeRollout

    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    model = tiny_onnx()
    key = f"fuzz/{uuid.uuid4().hex}/model.onnx"
    objects.put_bytes("lineloop-builds", key, model, "application/octet-stream")
    artifact = Artifact("model.onnx", "lineloop-builds", key, hashlib.sha256(model).hexdigest(), len(model))
    base = dataclasses.replace(BUILD, target="fuzz-target", artifacts=(artifact,))
    manifests: dict[str, bytes] = {}
    install_dir = tmp_path / "a" / "b" / "c" / "models"
    agent = EdgeAgent(fleet="fuzz-fleet", gateway_id="gw-1", target="fuzz-target", objects=objects,
                      trusted_keys=TRUSTED, install_dir=install_dir, fetch_url=lambda url: manifests[url])

    def rollout_for(data: bytes, align: bool) -> EdgeRollout:
        url = f"mem://{uuid.uuid4().hex}"
        manifests[url] = data
        rollout = EdgeRollout(rollout_id=f"r-{uuid.uuid4().hex[:8]}", fleet="fuzz-fleet", model_name=base.model_name,
                              version=base.version, target="fuzz-target", manifest_url=url,
                              manifest_sha256=hashlib.sha256(data).hexdigest(), signature=sign(SIGNER, data),
                              key_id=SIGNER_ID, artifacts=[ObjectRef(bucket="lineloop-builds", key=key,
                                                                     sha256=artifact.sha256)])
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            return rollout
        if align and isinstance(body, dict):  # the rollout announces what the manifest says, so the parse is what decides
            for name in ("model_name", "version", "target"):
                if isinstance(body.get(name), str):
                    setattr(rollout, name, body[name])
        return rollout

    def files_outside() -> list[str]:
        """Files under tmp_path but not under install_dir (a model_name like ../../x would put them there)."""
        inside = install_dir.resolve()
        return [str(p) for p in tmp_path.rglob("*") if p.is_file() and inside not in p.resolve().parents]

    await agent.on_rollout(rollout_for(base.to_bytes(), True))
    assert agent.model is not None
    docs = mutated(json.loads(base.to_bytes())).map(lambda d: json.dumps(d).encode())

    async def check(case) -> str:
        data, align = case
        before = agent.model
        pointer = (install_dir / "current.json").read_bytes()
        try:
            await agent.on_rollout(rollout_for(data, align))
        except Reject as rej:
            assert rej.reason and rej.detail, rej
            assert agent.model is before and (install_dir / "current.json").read_bytes() == pointer
            return f"refused:{rej.reason}"
        finally:
            assert not files_outside(), files_outside()
        if agent.model is not before:
            assert install_dir.resolve() in agent.model.path.resolve().parents, agent.model.path
            return "installed"
        return "skipped"

    await run_cases_async("file:rollout_install", st.tuples(raw_and_mutated(base.to_bytes(), docs), st.booleans()), check)

    # Found by this fuzz: a signed artifact onnxruntime cannot load raised its own Fail (a bare handler_error).
    junk = b"not an onnx model"
    junk_key = f"fuzz/{uuid.uuid4().hex}/model.onnx"
    objects.put_bytes("lineloop-builds", junk_key, junk, "application/octet-stream")
    unloadable = dataclasses.replace(base, version="2", artifacts=(Artifact(
        "model.onnx", "lineloop-builds", junk_key, hashlib.sha256(junk).hexdigest(), len(junk)),))
    running = agent.model
    rollout = rollout_for(unloadable.to_bytes(), True)
    del rollout.artifacts[:]
    with pytest.raises(Reject) as refused:
        await agent.on_rollout(rollout)
    assert refused.value.reason == "artifact_unloadable" and agent.model is running


@pytest.mark.parametrize("change", [
    {"model_name": "../../outside"}, {"version": "/abs"}, {"target": ""}, {"input_size": "64"}, {"classes": [1, 2]},
    {"artifacts": [{"name": "model.onnx", "bucket": {"x": 1}, "key": "k", "sha256": "0" * 64, "size_bytes": 1}]},
    {"artifacts": [{"name": "model.onnx", "bucket": "", "key": "k", "sha256": "0" * 64, "size_bytes": 1}]},
], ids=["traversal", "absolute", "empty_target", "size_as_text", "classes_not_text", "bucket_object", "bucket_empty"])
def test_found_by_this_fuzz_a_signed_manifest_a_gateway_cannot_use_is_refused(change):
    """Parsed before, then installed outside the install folder or raised TypeError/ValueError in the store client."""
    body = {**json.loads(BUILD.to_bytes()), **change}
    data = json.dumps(body).encode()
    with pytest.raises(RolloutManifestError) as refused:
        verify_manifest(data, sign(SIGNER, data), SIGNER_ID, TRUSTED, hashlib.sha256(data).hexdigest())
    assert refused.value.reason == "manifest_invalid"
