"""Which handler failures wait for a dependency (retried until it answers) and which count toward the DLQ."""

from __future__ import annotations

import socket
import sqlite3

import grpc
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from lineloop.bus.errors import is_unavailable
from lineloop.storage.objects import ObjectNotFound, ObjectStore, ObjectStoreUnavailable
from lineloop.v1.registry_pb2 import GetVersionRequest
from lineloop.v1.registry_pb2_grpc import RegistryServiceStub


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_object_store_is_unavailable_and_a_missing_object_is_not(stack):
    down = ObjectStore.from_url(f"http://127.0.0.1:{closed_port()}", "k", "s", timeout_s=1)
    with pytest.raises(ObjectStoreUnavailable) as err:
        down.get_bytes("lineloop-frames", "x.jpg")
    assert is_unavailable(err.value)
    up = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    with pytest.raises(ObjectNotFound) as missing:
        up.get_bytes("lineloop-frames", "no/such/key.jpg")
    assert not is_unavailable(missing.value)


async def test_a_peer_that_is_down_is_unavailable_and_a_refusal_is_not():
    async with grpc.aio.insecure_channel(f"127.0.0.1:{closed_port()}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await RegistryServiceStub(channel).GetVersion(GetVersionRequest(model_name="m", version="1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and is_unavailable(err.value)
    # Wrapped by the handler that called it: the cause decides.
    try:
        raise RuntimeError("could not ask the registry") from err.value
    except RuntimeError as wrapped:
        assert is_unavailable(wrapped)
    refused = grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "bad")
    assert not is_unavailable(refused)


def test_a_busy_sqlite_file_is_unavailable_and_a_missing_table_is_not(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    with engine.connect() as conn, pytest.raises(OperationalError) as err:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_unavailable(err.value)  # a bug: retrying forever would hide it

    holder = sqlite3.connect(tmp_path / "svc.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        busy = create_engine(f"sqlite:///{tmp_path / 'svc.db'}", connect_args={"timeout": 0.1})
        with busy.connect() as conn, pytest.raises(OperationalError) as locked:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in str(locked.value) and is_unavailable(locked.value)


def test_plain_bugs_are_not_unavailable():
    assert not is_unavailable(ValueError("bad value"))
    assert not is_unavailable(KeyError("missing"))
