"""gRPC channels that carry this process's credentials: the CLI's and the services' calls to each other.

From the environment (docs/security.md):
  LINELOOP_TOKEN / LINELOOP_TOKEN_FILE         a bearer JWT sent on every call (the file is re-read per
                                               channel, so a rotated token is picked up)
  LINELOOP_GRPC_CA_FILE                        CA that signed the servers' certificates: set, channels use TLS
  LINELOOP_GRPC_CLIENT_CERT_FILE / _KEY_FILE   a client certificate for mTLS (implies TLS)
Nothing set: a plaintext channel without credentials, as before auth existed.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MISSING_TOKEN_HINT = "set LINELOOP_TOKEN or LINELOOP_TOKEN_FILE (a JWT), or LINELOOP_GRPC_CLIENT_CERT_FILE/_KEY_FILE (mTLS)"


class ClientCredentials(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINELOOP_", extra="ignore")

    token: str = ""
    token_file: Path | None = None
    grpc_ca_file: Path | None = None
    grpc_client_cert_file: Path | None = None
    grpc_client_key_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ClientCredentials:
        if self.token and self.token_file is not None:
            raise ValueError("set LINELOOP_TOKEN or LINELOOP_TOKEN_FILE, not both")
        if (self.grpc_client_cert_file is None) != (self.grpc_client_key_file is None):
            raise ValueError("LINELOOP_GRPC_CLIENT_CERT_FILE and LINELOOP_GRPC_CLIENT_KEY_FILE go together")
        return self

    def bearer(self) -> str:
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip()
            except OSError as err:
                raise ValueError(f"LINELOOP_TOKEN_FILE {self.token_file}: {err.strerror}") from None
        return self.token.strip()

    @property
    def tls(self) -> bool:
        return self.grpc_ca_file is not None or self.grpc_client_cert_file is not None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        cert = self.grpc_client_cert_file.read_bytes() if self.grpc_client_cert_file else None
        key = self.grpc_client_key_file.read_bytes() if self.grpc_client_key_file else None
        ca = self.grpc_ca_file.read_bytes() if self.grpc_ca_file else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                    "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


def _with_token(metadata: Sequence[tuple[str, Any]] | None, token: str) -> list[tuple[str, Any]]:
    return [*(m for m in (metadata or ()) if m[0] != "authorization"), ("authorization", f"Bearer {token}")]


class _BearerInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                         grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer` to every call (works on plaintext channels, unlike call credentials)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _Details(d.method, d.timeout, _with_token(d.metadata, self.token), d.credentials,
                        getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _AioBearer:
    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(d.method, d.timeout, _with_token(d.metadata, self.token), d.credentials,
                                          d.wait_for_ready)


class _AioUnaryUnary(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _AioUnaryStream(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _AioStreamUnary(_AioBearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _AioStreamStream(_AioBearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def channel(target: str, credentials: ClientCredentials | None = None, *,
            options: Sequence[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A blocking channel to `target` with the configured credentials (the environment's by default)."""
    creds = credentials or ClientCredentials()
    ch = (grpc.secure_channel(target, creds.channel_credentials(), options=options) if creds.tls
          else grpc.insecure_channel(target, options=options))
    token = creds.bearer()
    return grpc.intercept_channel(ch, _BearerInterceptor(token)) if token else ch


def aio_channel(target: str, credentials: ClientCredentials | None = None, *,
                options: Sequence[tuple[str, Any]] | None = None,
                interceptors: Sequence[Any] = ()) -> grpc.aio.Channel:
    """An asyncio channel to `target` with the configured credentials (the environment's by default)."""
    creds = credentials or ClientCredentials()
    token = creds.bearer()
    chain = [*interceptors, *((cls(token) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream))
                              if token else ())]
    if creds.tls:
        return grpc.aio.secure_channel(target, creds.channel_credentials(), options=options, interceptors=chain or None)
    return grpc.aio.insecure_channel(target, options=options, interceptors=chain or None)


def refusal_hint(error: grpc.RpcError) -> str | None:
    """What to do about a refused call, for a person reading a CLI's error; None if not a refusal."""
    code = error.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        creds = ClientCredentials()
        if not creds.bearer() and creds.grpc_client_cert_file is None:
            return f"no credentials were sent: {MISSING_TOKEN_HINT}"
        return "the credentials sent were refused (see above): get a fresh token or certificate"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return "your identity lacks a role this method needs: use a token or certificate with one of the roles named above"
    return None
