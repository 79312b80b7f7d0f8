"""Making credentials with `cryptography` and PyJWT: a CA, certificates with a role, signing keys, tokens.

For tests and for a stack that creates its own identities at start-up; a plant's deployment
brings its own CA and token issuer. Nothing here implements crypto: it only calls the libraries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Issued:
    key: PrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        """`<name>.crt` and `<name>.key` (mode 600) in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        return cert, key


def _name(cn: str, ous: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lineloop")]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in ous]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def make_ca(cn: str = "lineloop CA", days: int = 365) -> Issued:
    key = ec_key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(key, cert)


def issue(ca: Issued, cn: str, *, roles: tuple[str, ...] = (), server_names: tuple[str, ...] = (),
          days: int = 365) -> Issued:
    """A certificate signed by `ca`: a client one (roles as OU values) or, with `server_names`, a server one."""
    key = ec_key()
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn, roles)).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server_names:
        sans: list[x509.GeneralName] = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = (builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def mint_token(key: PrivateKey, *, issuer: str, audience: str, subject: str, roles: tuple[str, ...] | list[str],
               kid: str | None = None, ttl_s: float = 3600, now: dt.datetime | None = None) -> str:
    """A signed JWT (RS256 for an RSA key, ES256 for an EC key) with `sub` and a `roles` claim."""
    now = now or dt.datetime.now(dt.UTC)
    claims = {"iss": issuer, "aud": audience, "sub": subject, "roles": list(roles), "iat": now,
              "exp": now + dt.timedelta(seconds=ttl_s), "jti": uuid.uuid4().hex}
    algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def jwks_json(public_keys: dict[str, rsa.RSAPublicKey | ec.EllipticCurvePublicKey]) -> str:
    """A JWKS document (what LINELOOP_AUTH_JWKS_FILE holds) for `{kid: public key}`."""
    keys = []
    for kid, key in public_keys.items():
        algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(key))
        jwk["kid"] = kid
        keys.append(jwk)
    return json.dumps({"keys": keys}, indent=2)


@dataclass(frozen=True)
class LocalIssuer:
    """A folder of identities for one deployment with no identity provider (`lineloop auth init`).

        signing.key          the issuer's private key (mode 600); never leaves this folder
        tokens/<role>.jwt    one token per role (mode 600), for people, gateways and tools
        service/jwks.json    what a service mounts: the keys it verifies tokens with, and
        service/token        its own `service` token for calls to other services (mode 640:
                             give the folder to the services' group, e.g. 10001 in the images)

    Re-running keeps the key, so tokens already handed out stay valid until they expire; the
    tokens are minted anew.
    """

    folder: Path
    issuer: str
    audience: str

    @property
    def jwks_file(self) -> Path:
        return self.folder / "service" / "jwks.json"

    @property
    def service_token_file(self) -> Path:
        return self.folder / "service" / "token"

    def token_file(self, role: str) -> Path:
        return self.folder / "tokens" / f"{role}.jwt"

    def init(self, roles: tuple[str, ...], ttl_s: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "signing.key"
        if key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        else:
            key = ec_key()
            _write(key_file, key_pem(key), 0o600)
        kid = hashlib.sha256(public_pem(key)).hexdigest()[:16]
        (self.folder / "service").mkdir(exist_ok=True)
        (self.folder / "tokens").mkdir(exist_ok=True)
        _write(self.jwks_file, jwks_json({kid: key.public_key()}).encode(), 0o644)

        def mint(role: str) -> bytes:
            return (mint_token(key, issuer=self.issuer, audience=self.audience, subject=f"local-{role}", roles=[role],
                               kid=kid, ttl_s=ttl_s) + "\n").encode()

        for role in roles:
            _write(self.token_file(role), mint(role), 0o600)
        _write(self.service_token_file, mint("service"), 0o640)


def _write(path: Path, data: bytes, mode: int) -> None:
    """`data` into `path` with `mode`, never readable more widely in between."""
    path.touch(mode=mode)
    path.chmod(mode)
    path.write_bytes(data)
