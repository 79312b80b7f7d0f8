"""The Ed25519 key that signs build manifests.

Production configures `LINELOOP_COMPILER_SIGNING_KEY_FILE` (a PEM private key from a
secret); a configured key that is missing is an error. The embedded default generates a
development key under the state dir once, says so in the log, and writes its public key
beside it for the edge agents of the embedded stack to trust.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineloop.edge.manifest import key_id, public_key_pem

log = logging.getLogger(__name__)

DEV_KEY = Path("compiler") / "signing-key.pem"
DEV_PUBLIC_KEY = Path("compiler") / "signing-key.pub.pem"


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.key_id = key_id(private_key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @property
    def public_key_pem(self) -> bytes:
        return public_key_pem(self.private_key.public_key())


def load_signer(configured: Path | None, state_dir: Path) -> Signer:
    if configured is not None:
        key = serialization.load_pem_private_key(Path(configured).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{configured} is not an Ed25519 private key")
        return Signer(key)
    path = Path(state_dir) / DEV_KEY
    public = Path(state_dir) / DEV_PUBLIC_KEY
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        signer = Signer(key)
        if not public.exists():
            public.write_bytes(signer.public_key_pem)
        return signer
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    signer = Signer(key)
    public.write_bytes(signer.public_key_pem)
    log.warning(
        "no signing key configured: generated a development Ed25519 key %s at %s (public key beside it); "
        "set LINELOOP_COMPILER_SIGNING_KEY_FILE in production", signer.key_id, path,
    )
    return signer
