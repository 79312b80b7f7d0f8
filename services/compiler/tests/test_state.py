"""Build jobs on SQLite and PostgreSQL: one claim per build across replicas, abandoned claims retaken."""

from __future__ import annotations

from datetime import timedelta

from lineloop.compiler import state
from lineloop.storage.sql import Database, utcnow
from lineloop.v1.events_pb2 import BUILD_STATUS_FAILED, BUILD_STATUS_OK, ModelCompiled


def test_builds_are_claimed_once_retaken_when_abandoned_and_retried_when_failed(database_url):
    db = Database(database_url)
    db.migrate(state.SCHEMA_COMPONENT, state.SCHEMA_VERSION, state.metadata)
    try:
        with db.transaction() as s:
            first = state.ensure_build(s, "apples", "1", "triton-onnx")
            assert state.ensure_build(s, "apples", "1", "triton-onnx") == first  # redelivery queues nothing new
            state.ensure_build(s, "apples", "1", "tensorrt-fp16-sm87-trt10.3")
        fresh = utcnow() - timedelta(minutes=30)
        with db.transaction() as s:
            assert state.claim_next(s, "worker-a", {"triton-onnx"}, fresh)[0] == first
        with db.transaction() as s:  # another replica: nothing left it can build
            assert state.claim_next(s, "worker-b", {"triton-onnx"}, fresh) is None
        with db.transaction() as s:  # worker-a died: after the claim timeout its build is taken again
            assert state.claim_next(s, "worker-b", {"triton-onnx"}, utcnow() + timedelta(seconds=1))[0] == first
        with db.transaction() as s:
            state.finish(s, first, ModelCompiled(build_id=first, target="triton-onnx", status=BUILD_STATUS_FAILED))
            assert state.get_build(s, first)[0] == state.DONE
            state.ensure_build(s, "apples", "1", "triton-onnx", retry_failed=True)
            assert state.get_build(s, first)[0] == state.PENDING  # Compile retries a failed build
            assert state.claim_next(s, "worker-b", {"triton-onnx"}, fresh)[0] == first
            state.finish(s, first, ModelCompiled(build_id=first, target="triton-onnx", status=BUILD_STATUS_OK))
            state.ensure_build(s, "apples", "1", "triton-onnx", retry_failed=True)
            assert state.get_build(s, first)[0] == state.DONE  # an OK build is never rebuilt
            assert [b.target for _, b in state.list_builds(s, "apples")] == ["triton-onnx", "tensorrt-fp16-sm87-trt10.3"]
    finally:
        db.dispose()
