"""S3 over https with a plant's own CA: the embedded store (SeaweedFS) serving TLS with a
certificate from a CA made here, and lineloop's client trusting exactly that CA."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from pydantic import ValidationError

from lineloop.runtime import pki
from lineloop.runtime.settings import StackSettings
from lineloop.stack.config import StackConfig, free_ports
from lineloop.stack.servers import seaweedfs
from lineloop.storage.objects import ObjectStore, ObjectStoreUnavailable

BUCKET = "lineloop-frames"


@pytest.fixture(scope="module")
def tls_store(tmp_path_factory):
    """The embedded store's own command, plus an https S3 port with a certificate for 127.0.0.1."""
    base = tmp_path_factory.mktemp("s3tls")
    config = StackConfig.on_free_ports(base / "state")
    (config.state_dir / "run").mkdir(parents=True)
    spec = seaweedfs(config)
    spec.prepare()
    ca = pki.make_ca("plant CA")
    cert, key = pki.issue(ca, "s3", server_names=("127.0.0.1",)).write(base / "tls", "s3")
    ca_file = base / "tls" / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    other_ca = base / "tls" / "other-ca.crt"
    other_ca.write_bytes(pki.make_ca("someone else's CA").cert_pem)
    (https_port,) = free_ports(1)
    with open(base / "s3.log", "wb") as log:
        server = subprocess.Popen([*spec.argv, f"-s3.port.https={https_port}", f"-s3.cert.file={cert}",
                                   f"-s3.key.file={key}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        endpoint = f"https://127.0.0.1:{https_port}"
        deadline = time.monotonic() + 120
        while True:  # the port answers before the store behind it does: wait for a bucket call
            try:
                socket.create_connection(("127.0.0.1", https_port), 0.5).close()
                store = ObjectStore.from_url(endpoint, config.s3_access_key, config.s3_secret_key, ca_file=ca_file)
                store.ensure_buckets([BUCKET])
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"TLS store did not start: {(base / 's3.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield endpoint, config, ca_file, other_ca
    finally:
        server.terminate()
        server.wait(30)
        spec.cleanup()


def settings(monkeypatch, endpoint: str, config: StackConfig, ca_file) -> StackSettings:
    monkeypatch.setenv("LINELOOP_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("LINELOOP_S3_ACCESS_KEY", config.s3_access_key)
    monkeypatch.setenv("LINELOOP_S3_SECRET_KEY", config.s3_secret_key)
    if ca_file is None:
        monkeypatch.delenv("LINELOOP_S3_CA_FILE", raising=False)
    else:
        monkeypatch.setenv("LINELOOP_S3_CA_FILE", str(ca_file))
    return StackSettings()


def test_objects_round_trip_over_https_trusting_the_plants_ca(tls_store, monkeypatch):
    endpoint, config, ca_file, _ = tls_store
    store = settings(monkeypatch, endpoint, config, ca_file).object_store()  # as every service builds it
    store.put_bytes(BUCKET, "tls/probe.bin", b"over tls", "application/octet-stream")
    assert store.get_bytes(BUCKET, "tls/probe.bin") == b"over tls"


@pytest.mark.parametrize("trust", ["system CAs", "another CA"])
def test_a_certificate_from_an_untrusted_ca_is_refused_with_the_setting_to_fix(tls_store, monkeypatch, trust):
    endpoint, config, _, other_ca = tls_store
    store = settings(monkeypatch, endpoint, config, other_ca if trust == "another CA" else None).object_store(timeout_s=5)
    with pytest.raises(ObjectStoreUnavailable, match="LINELOOP_S3_CA_FILE") as refused:
        store.put_bytes(BUCKET, "tls/never.bin", b"must not be written", "application/octet-stream")
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


def test_a_ca_file_that_is_missing_or_set_for_plain_http_stops_the_settings(tmp_path, monkeypatch, tls_store):
    endpoint, config, ca_file, _ = tls_store
    with pytest.raises(ValidationError, match="is not a readable file"):
        settings(monkeypatch, endpoint, config, tmp_path / "missing-ca.crt")
    with pytest.raises(ValidationError, match="is not https"):
        settings(monkeypatch, config.s3_endpoint, config, ca_file)
    with pytest.raises(ValueError, match="is not https"):
        ObjectStore.from_url(config.s3_endpoint, config.s3_access_key, config.s3_secret_key, ca_file=ca_file)
