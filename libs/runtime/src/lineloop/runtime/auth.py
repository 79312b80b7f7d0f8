"""Who is calling, and may they: the gRPC server's authentication and authorisation.

Every call but health checks and reflection carries either a bearer JWT
(`authorization: Bearer <token>`, checked with PyJWT against the configured issuer, audience
and keys; RS256/ES256 only, never shared secrets) or, on an mTLS port, a client certificate
signed by the configured client CA. A token, when sent, is the identity; otherwise the
certificate is. The roles allowed on each rpc are the contract's `(lineloop.v1.access)`
options (lineloop.contracts.access); `admin` may call anything.

Identities:
  token        name = `sub`, roles = the `roles` claim (a list, or one space-separated string)
  certificate  name = subject CN (else the first DNS SAN), roles = the subject's OU values

Handlers read the caller with `current_identity()` (None when auth is off).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from lineloop.contracts.access import ADMIN, allowed_roles, is_open
from lineloop.runtime.errors import abort
from lineloop.runtime.settings import SecuritySettings
from lineloop.telemetry import metrics

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "ES256"]
NO_CREDENTIALS = ("no credentials: send a bearer token (the CLI reads LINELOOP_TOKEN or LINELOOP_TOKEN_FILE) "
                  "or connect with a client certificate (LINELOOP_GRPC_CLIENT_CERT_FILE/_KEY_FILE)")


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    name: str
    roles: frozenset[str]
    via: str  # "jwt" or "mtls"


_current: ContextVar[Identity | None] = ContextVar("lineloop_identity", default=None)


def current_identity() -> Identity | None:
    """The caller of the rpc being handled; None when the server runs with auth off."""
    return _current.get()


class Unauthenticated(Exception):
    """A credential that proves nothing: `reason` is an UPPER_SNAKE code, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _roles_of(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    return frozenset()


class TokenVerifier:
    """Checks bearer JWTs: signature (JWKS or PEM key), exp, nbf, iss, aud; returns the identity."""

    def __init__(self, *, issuer: str, audience: str, jwks_file: Path | None = None,
                 public_key_file: Path | None = None, roles_claim: str = "roles", leeway_s: float = 30.0) -> None:
        self.issuer, self.audience, self.roles_claim, self.leeway_s = issuer, audience, roles_claim, leeway_s
        # kid -> (key, its one algorithm): a token must use its key's algorithm, never pick another.
        self._keys: dict[str | None, tuple[Any, str]] = {}
        if jwks_file is not None:
            for key in jwt.PyJWKSet.from_json(jwks_file.read_text()).keys:
                if key.algorithm_name in ALGORITHMS:
                    self._keys[key.key_id] = (key.key, key.algorithm_name)
        elif public_key_file is not None:
            key = serialization.load_pem_public_key(public_key_file.read_bytes())
            if isinstance(key, rsa.RSAPublicKey):
                self._keys[None] = (key, "RS256")
            elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
                self._keys[None] = (key, "ES256")
        if not self._keys:
            raise ValueError(f"no verification key: a JWKS file or PEM public key with an RSA or P-256 key ({', '.join(ALGORITHMS)})")

    @classmethod
    def from_settings(cls, s: SecuritySettings) -> TokenVerifier:
        return cls(issuer=s.auth_issuer, audience=s.auth_audience, jwks_file=s.auth_jwks_file,
                   public_key_file=s.auth_public_key_file, roles_claim=s.auth_roles_claim, leeway_s=s.auth_leeway_s)

    def _key_for(self, token: str) -> tuple[Any, str]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.DecodeError as err:
            raise Unauthenticated("TOKEN_MALFORMED", f"bearer token is not a JWT: {err}") from None
        if kid in self._keys:
            return self._keys[kid]
        if len(self._keys) == 1 and (kid is None or None in self._keys):
            return next(iter(self._keys.values()))
        raise Unauthenticated("TOKEN_UNKNOWN_KEY", f"bearer token is signed with key id {kid!r}, which is not in the configured key set")

    def verify(self, token: str) -> Identity:
        key, algorithm = self._key_for(token)
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway_s,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("TOKEN_EXPIRED", "bearer token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("TOKEN_WRONG_AUDIENCE", f"bearer token is not for this audience (expected {self.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("TOKEN_WRONG_ISSUER", f"bearer token is not from the configured issuer (expected {self.issuer!r})") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("TOKEN_BAD_SIGNATURE", "bearer token's signature does not verify against the configured keys") from None
        except jwt.MissingRequiredClaimError as err:
            raise Unauthenticated("TOKEN_MISSING_CLAIM", f"bearer token lacks a required claim: {err}") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("TOKEN_NOT_YET_VALID", "bearer token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated("TOKEN_BAD_ALGORITHM", f"bearer token's algorithm is not its key's ({algorithm})") from None
        except (jwt.PyJWTError, ValueError, TypeError) as err:  # anything else PyJWT refuses
            raise Unauthenticated("TOKEN_INVALID", f"bearer token is invalid: {err}") from None
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise Unauthenticated("TOKEN_MISSING_CLAIM", "bearer token's `sub` is empty")
        return Identity(name=claims["sub"], roles=_roles_of(claims.get(self.roles_claim)), via="jwt")


def identity_from_certificate(pem: bytes) -> Identity:
    """A verified client certificate's identity: CN (else first DNS SAN) and its OU values as roles."""
    cert = x509.load_pem_x509_certificate(pem)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not names:
        try:
            san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
            names = san.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            pass
    if not names:
        raise Unauthenticated("CERT_NO_NAME", "client certificate has neither a subject CN nor a DNS SAN")
    roles = frozenset(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))
    return Identity(name=str(names[0]), roles=roles, via="mtls")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health/reflection without a valid credential whose roles allow the method."""

    def __init__(self, service: str, settings: SecuritySettings) -> None:
        self.service = service
        self.verifier = TokenVerifier.from_settings(settings) if settings.jwt else None
        self.certificates = settings.grpc_tls_client_ca_file is not None

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_open(method):
            return handler
        return _guarded(handler, lambda context: self._authorise(method, context))

    def _authenticate(self, context: grpc.aio.ServicerContext) -> Identity:
        header = dict(context.invocation_metadata() or ()).get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("TOKEN_MALFORMED", "the authorization header must be `Bearer <JWT>`")
            if self.verifier is None:
                raise Unauthenticated("TOKENS_NOT_ACCEPTED", "this server accepts no bearer tokens (no issuer configured); "
                                      "connect with a client certificate")
            return self.verifier.verify(token.strip())
        pem = (context.auth_context() or {}).get("x509_pem_cert")
        if self.certificates and pem:
            return identity_from_certificate(pem[0])
        raise Unauthenticated("NO_CREDENTIALS", NO_CREDENTIALS)

    async def _authorise(self, method: str, context: grpc.aio.ServicerContext) -> Identity:
        try:
            identity = self._authenticate(context)
        except Unauthenticated as err:
            await self._refuse(context, method, grpc.StatusCode.UNAUTHENTICATED, err.reason, str(err))
            raise AssertionError("unreachable: abort raises") from None
        allowed = allowed_roles(method)
        if not identity.roles & set(allowed):
            roles = ", ".join(sorted(identity.roles)) or "none"
            await self._refuse(context, method, grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED",
                               f"{identity.name} (roles: {roles}) may not call {method}; roles that may: {', '.join(allowed)}",
                               identity=identity.name)
        return identity

    async def _refuse(self, context, method: str, code: grpc.StatusCode, reason: str, message: str, **extra: str) -> None:
        metrics.rpc_auth_refused.add(1, {"service": self.service, "method": method, "outcome": code.name.lower(), "reason": reason})
        log.warning("refused %s: %s %s", method, code.name, message,
                    extra={"method": method, "code": code.name, "reason": reason, "peer": context.peer(), **extra})
        await abort(context, code, reason, message, service=self.service, method=method)


Authorise = Callable[[grpc.aio.ServicerContext], Awaitable[Identity]]


def _guarded(handler: grpc.RpcMethodHandler, authorise: Authorise) -> grpc.RpcMethodHandler:
    """`handler` with the same (de)serialisers whose behaviour first authorises, then runs with the identity set."""
    if handler.request_streaming and handler.response_streaming:
        behaviour, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behaviour, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behaviour, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behaviour, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler

    if handler.response_streaming:
        async def guarded(request, context):
            token = _current.set(await authorise(context))
            try:
                result = behaviour(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):  # a handler that writes with context.write()
                    await result
                else:  # a synchronous generator
                    for item in result:
                        yield item
            finally:
                _current.reset(token)
    else:
        async def guarded(request, context):
            token = _current.set(await authorise(context))
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                _current.reset(token)

    return make(guarded, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def interceptors(service: str, settings: SecuritySettings) -> list[grpc.aio.ServerInterceptor]:
    """The auth interceptor when auth is required, else none (and a WARNING: the API is open)."""
    if settings.auth_mode == "off":
        log.warning("%s: gRPC API is UNAUTHENTICATED (LINELOOP_AUTH_MODE=off): anyone who reaches the port may call "
                    "every method, including promotions; set LINELOOP_AUTH_MODE=required (docs/security.md)", service)
        return []
    if not settings.tls:
        log.warning("%s: gRPC port without TLS: bearer tokens travel in clear text; set LINELOOP_GRPC_TLS_CERT_FILE/KEY_FILE",
                    service)
    return [AuthInterceptor(service, settings)]


def server_credentials(settings: SecuritySettings) -> grpc.ServerCredentials | None:
    """TLS credentials of the gRPC port (requiring a client certificate when a client CA is set); None: plaintext."""
    if not settings.tls:
        return None
    assert settings.grpc_tls_cert_file is not None and settings.grpc_tls_key_file is not None
    client_ca = settings.grpc_tls_client_ca_file.read_bytes() if settings.grpc_tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.grpc_tls_key_file.read_bytes(), settings.grpc_tls_cert_file.read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


__all__ = ["ADMIN", "AuthInterceptor", "Identity", "TokenVerifier", "Unauthenticated", "current_identity",
           "identity_from_certificate", "interceptors", "server_credentials"]
