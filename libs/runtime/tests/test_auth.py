"""Authentication and the role x method matrix over real gRPC (issue 11).

Servers are built by the services' own builder (`grpc_server`, `add_grpc_port`) with every
lineloop.v1 service registered; each handler answers FAILED_PRECONDITION naming the identity
it saw, so "allowed" means the call reached the handler with the right caller, and a refused
call must never get there. Keys, CAs and certificates are made here with `cryptography`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import pkgutil
from pathlib import Path

import grpc
import jwt
import pytest
from google.protobuf import message_factory
from prometheus_client import REGISTRY
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

import lineloop.v1
from lineloop.cli.main import app as lineloop_cli
from lineloop.cli.models import app as models_cli
from lineloop.contracts import access
from lineloop.runtime import error_info
from lineloop.runtime.auth import TokenVerifier, current_identity, interceptors
from lineloop.runtime.client import ClientCredentials, aio_channel
from lineloop.runtime.pki import issue, jwks_json, make_ca, mint_token, public_pem, ec_key, rsa_key
from lineloop.runtime.service import add_grpc_port, grpc_server
from lineloop.runtime.settings import SecuritySettings
from lineloop.telemetry import setup_telemetry
from lineloop.v1 import registry_pb2

ISSUER, AUDIENCE = "https://id.plant.example", "lineloop"
REACHED = grpc.StatusCode.FAILED_PRECONDITION
EXTRA_METHOD = "/lineloop.v1.Undeclared/Do"  # a method the contract does not know: fail closed
PROMOTE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].methods_by_name["Promote"]


def _methods():
    for file in access.CONTRACT_FILES:
        for service in file.services_by_name.values():
            for method in service.methods:
                yield service, method


def _probe_servicers(server: grpc.aio.Server) -> None:
    """Every contract service, each method answering REACHED with the caller's name."""
    for file in access.CONTRACT_FILES:
        grpc_module = importlib.import_module(file.name.replace("/", ".").removesuffix(".proto") + "_pb2_grpc")
        for service in file.services_by_name.values():
            attrs = {}
            for method in service.methods:
                attrs[method.name] = _probe(method)
            servicer = type(f"Probe{service.name}", (getattr(grpc_module, f"{service.name}Servicer"),), attrs)()
            getattr(grpc_module, f"add_{service.name}Servicer_to_server")(servicer, server)

    async def extra(request, context):
        await context.abort(REACHED, f"reached as {current_identity().name}")

    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("lineloop.v1.Undeclared", {
        "Do": grpc.unary_unary_rpc_method_handler(extra, request_deserializer=bytes, response_serializer=bytes)})])


def _probe(method):
    async def reach(context):
        identity = current_identity()
        await context.abort(REACHED, f"reached {method.name} as {identity.name if identity else '-'}")

    if method.server_streaming:
        async def streaming(self, request, context):
            await reach(context)
            yield  # an async generator, like the real streaming handlers
        return streaming

    async def unary(self, request, context):
        await reach(context)
    return unary


async def _call(channel: grpc.aio.Channel, path: str, method=None) -> grpc.aio.AioRpcError:
    """Call `path` with an empty request; return the error (every probe ends in one)."""
    if method is None:
        call = channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)(b"")
    else:
        request = message_factory.GetMessageClass(method.input_type)()
        kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
            (method.client_streaming, method.server_streaming)]
        stub = kind(path, request_serializer=type(request).SerializeToString,
                    response_deserializer=message_factory.GetMessageClass(method.output_type).FromString)
        call = stub(iter([request]) if method.client_streaming else request, timeout=10)
    try:
        if method is not None and method.server_streaming:
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError(f"{path} answered without error: the probe handlers always abort")


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rsa, self.ec, self.stranger = rsa_key(), ec_key(), rsa_key()
        self.jwks = folder / "jwks.json"
        self.jwks.write_text(jwks_json({"rsa-1": self.rsa.public_key(), "ec-1": self.ec.public_key()}))
        self.ca, self.other_ca = make_ca("plant CA"), make_ca("someone else's CA")
        self.ca_file = folder / "ca.crt"
        self.ca_file.write_bytes(self.ca.cert_pem)
        self.server_cert, self.server_key = issue(self.ca, "lineloop-test", server_names=("localhost", "127.0.0.1")).write(folder, "server")

    def token(self, roles, *, subject: str = "alice", key=None, kid: str = "rsa-1", **overrides) -> str:
        claims = {"issuer": ISSUER, "audience": AUDIENCE, "subject": subject, "roles": roles, "kid": kid, **overrides}
        return mint_token(key or self.rsa, **claims)

    def client(self, name: str, roles: tuple[str, ...], ca=None) -> ClientCredentials:
        cert, key = issue(ca or self.ca, name, roles=roles).write(self.folder, f"client-{name}")
        return ClientCredentials(grpc_ca_file=self.ca_file, grpc_client_cert_file=cert, grpc_client_key_file=key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    setup_telemetry("auth-test", metrics_port=None, log_format="console")  # the meter the refusal counter reports to
    return Pki(tmp_path_factory.mktemp("pki"))


def refusals(**labels: str) -> float:
    """lineloop_rpc_auth_refused_total{labels} as /metrics serves it."""
    return sum(sample.value for family in REGISTRY.collect() for sample in family.samples
               if sample.name == "lineloop_rpc_auth_refused_total" and labels.items() <= sample.labels.items())


async def _serve(security: SecuritySettings) -> tuple[grpc.aio.Server, int]:
    server = grpc_server("auth-test", security)
    _probe_servicers(server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    reflection.enable_server_reflection([reflection.SERVICE_NAME], server)
    port = add_grpc_port(server, "127.0.0.1:0", security)
    await server.start()
    return server, port


@pytest.fixture
async def token_server(pki):
    """Plaintext port, bearer tokens only."""
    server, port = await _serve(SecuritySettings(auth_mode="required", auth_issuer=ISSUER, auth_audience=AUDIENCE,
                                                 auth_jwks_file=pki.jwks))
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
async def mtls_server(pki):
    """TLS port requiring a client certificate from the plant CA; tokens accepted too."""
    server, port = await _serve(SecuritySettings(
        auth_mode="required", auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_jwks_file=pki.jwks,
        grpc_tls_cert_file=pki.server_cert, grpc_tls_key_file=pki.server_key, grpc_tls_client_ca_file=pki.ca_file))
    yield f"localhost:{port}"
    await server.stop(None)


def test_every_rpc_of_every_contract_service_declares_roles():
    """Fail closed starts here: a new rpc, or a new proto file, without `(access)` roles fails this test."""
    services = {}
    for info in pkgutil.iter_modules(lineloop.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"lineloop.v1.{info.name}")
            services.update({s.full_name: s for s in module.DESCRIPTOR.services_by_name.values()})
    assert services, "no services found in lineloop.v1"
    undeclared = [f"/{s.full_name}/{m.name}" for s in services.values() for m in s.methods
                  if not access.METHOD_ROLES.get(f"/{s.full_name}/{m.name}")]
    assert undeclared == []
    assert {m.split("/")[1] for m in access.METHOD_ROLES} == set(services)
    assert access.allowed_roles(EXTRA_METHOD) == ("admin",)


def test_docs_carry_the_contracts_table():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "security.md").read_text()
    assert access.markdown_table() in doc, "docs/security.md's table is stale: paste `python -m lineloop.contracts.access`"


@pytest.fixture(params=["jwt", "mtls"])
async def matrix_server(request, pki):
    """(how callers authenticate, address): the token server, or the mTLS one with role certificates."""
    if request.param == "jwt":
        security = SecuritySettings(auth_mode="required", auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_jwks_file=pki.jwks)
    else:
        security = SecuritySettings(auth_mode="required", grpc_tls_cert_file=pki.server_cert,
                                    grpc_tls_key_file=pki.server_key, grpc_tls_client_ca_file=pki.ca_file)
    server, port = await _serve(security)
    yield request.param, f"{'127.0.0.1' if request.param == 'jwt' else 'localhost'}:{port}"
    await server.stop(None)


async def test_role_x_method_matrix(pki, matrix_server):
    """Every role x every rpc: allowed calls reach the handler as the caller, the others are PERMISSION_DENIED."""
    via, target = matrix_server
    wrong: list[str] = []
    for role in access.ROLES:
        creds = (ClientCredentials(token=pki.token([role], subject=f"{role}-user")) if via == "jwt"
                 else pki.client(f"{role}-user", (role,)))
        async with aio_channel(target, creds) as ch:
            for service, method in _methods():
                path = f"/{service.full_name}/{method.name}"
                err = await _call(ch, path, method)
                allowed = role in access.allowed_roles(path)
                expected = (REACHED, f"reached {method.name} as {role}-user") if allowed else (grpc.StatusCode.PERMISSION_DENIED, None)
                got = (err.code(), err.details() if allowed else None)
                if got != expected:
                    wrong.append(f"{role} {path}: {err.code().name} {err.details()}")
                if not allowed and (path not in err.details() or "roles that may:" not in err.details()):
                    wrong.append(f"{role} {path}: refusal does not name the method and roles: {err.details()}")
            undeclared = await _call(ch, EXTRA_METHOD)
            if undeclared.code() != (REACHED if role == "admin" else grpc.StatusCode.PERMISSION_DENIED):
                wrong.append(f"{role} {EXTRA_METHOD}: {undeclared.code().name}")
    assert wrong == []


async def test_refused_tokens_are_unauthenticated_with_the_reason(pki, token_server, caplog):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    cases = {
        "TOKEN_EXPIRED": pki.token(["admin"], now=past, ttl_s=60),
        "TOKEN_BAD_SIGNATURE": pki.token(["admin"], key=pki.stranger),  # right kid, wrong key
        "TOKEN_WRONG_AUDIENCE": pki.token(["admin"], audience="someone-else"),
        "TOKEN_WRONG_ISSUER": pki.token(["admin"], issuer="https://evil.example"),
        "TOKEN_UNKNOWN_KEY": pki.token(["admin"], kid="nobody"),
        "TOKEN_MALFORMED": "not-a-jwt",
    }
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "eve", "roles": ["admin"], "exp": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)}
    confused = {  # algorithm confusion: each must be refused as such, whatever key the kid names
        "EC key for the RSA kid": pki.token(["admin"], key=pki.ec, kid="rsa-1"),
        "HS256 with a shared secret": jwt.encode(claims, "a-shared-secret-that-is-long-enough!", algorithm="HS256",
                                                 headers={"kid": "rsa-1"}),
        "unsigned (alg none)": jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"}),
    }
    path = "/lineloop.v1.RegistryService/Promote"
    method = PROMOTE
    expired_before = refusals(service="auth-test", method=path, outcome="unauthenticated", reason="TOKEN_EXPIRED")
    got = {}
    for reason, token in [*cases.items(), *confused.items()]:
        async with aio_channel(token_server, ClientCredentials(token=token)) as ch:
            err = await _call(ch, path, method)
            got[reason] = (err.code(), error_info(err).reason if error_info(err) else None)
    assert got == {**{reason: (grpc.StatusCode.UNAUTHENTICATED, reason) for reason in cases},
                   **{name: (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_BAD_ALGORITHM") for name in confused}}
    assert refusals(service="auth-test", method=path, outcome="unauthenticated", reason="TOKEN_EXPIRED") == expired_before + 1
    assert any(r.levelname == "WARNING" and "refused /lineloop.v1.RegistryService/Promote: UNAUTHENTICATED bearer token has expired"
               in r.getMessage() for r in caplog.records)

    async with aio_channel(token_server, ClientCredentials()) as ch:
        err = await _call(ch, path, method)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "LINELOOP_TOKEN" in err.details()
        # probes stay open: health and reflection answer without credentials
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for answer in listing:
            assert reflection.SERVICE_NAME in [s.name for s in answer.list_services_response.service]

    # an EC (ES256) key from the JWKS works as well as the RSA one
    async with aio_channel(token_server, ClientCredentials(token=pki.token(["release-manager"], key=pki.ec, kid="ec-1"))) as ch:
        assert (await _call(ch, path, method)).code() == REACHED


async def test_mtls_certificate_maps_to_its_role_and_other_cas_are_refused(pki, mtls_server):
    promote = "/lineloop.v1.RegistryService/Promote"
    method = PROMOTE
    async with aio_channel(mtls_server, pki.client("rm-bob", ("release-manager",))) as ch:
        err = await _call(ch, promote, method)
        assert (err.code(), err.details()) == (REACHED, "reached Promote as rm-bob")
    async with aio_channel(mtls_server, pki.client("gw-7", ("gateway",))) as ch:
        err = await _call(ch, promote, method)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "gw-7" in err.details()
    # a token, when sent, is the identity even on an mTLS channel
    creds = pki.client("gw-8", ("gateway",)).model_copy(update={"token": pki.token(["release-manager"], subject="carol")})
    async with aio_channel(mtls_server, creds) as ch:
        assert (await _call(ch, promote, method)).details() == "reached Promote as carol"
    # another CA's certificate, and no certificate at all, fail the handshake: no handler runs
    for creds in (pki.client("intruder", ("admin",), ca=pki.other_ca), ClientCredentials(grpc_ca_file=pki.ca_file)):
        async with aio_channel(mtls_server, creds) as ch:
            err = await _call(ch, promote, method)
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()


def test_settings_refuse_required_without_a_way_to_authenticate(pki):
    with pytest.raises(ValueError, match="no way to authenticate"):
        SecuritySettings(auth_mode="required")
    with pytest.raises(ValueError, match="LINELOOP_AUTH_AUDIENCE"):
        SecuritySettings(auth_mode="required", auth_issuer=ISSUER, auth_jwks_file=pki.jwks)
    with pytest.raises(ValueError, match="exactly one of"):
        SecuritySettings(auth_issuer=ISSUER, auth_audience=AUDIENCE)
    key = pki.folder / "signing.pub"
    key.write_bytes(public_pem(pki.rsa))
    assert SecuritySettings(auth_mode="required", auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_public_key_file=key).jwt


async def test_cli_says_what_is_missing_when_refused(pki, token_server):
    """The CLI's channels carry LINELOOP_TOKEN / LINELOOP_TOKEN_FILE; a refusal names what to set."""
    token_file = pki.folder / "gateway.jwt"
    token_file.write_text(pki.token(["gateway"], subject="gw-1") + "\n")
    clean = {"LINELOOP_TOKEN": None, "LINELOOP_TOKEN_FILE": None}

    def promote(**env):
        return CliRunner().invoke(models_cli, ["promote", "m", "1", "--target", token_server], env={**clean, **env})

    missing = await asyncio.to_thread(promote)
    assert missing.exit_code == 1 and "UNAUTHENTICATED" in missing.output
    assert "set LINELOOP_TOKEN or LINELOOP_TOKEN_FILE" in missing.output
    denied = await asyncio.to_thread(promote, LINELOOP_TOKEN_FILE=str(token_file))
    assert denied.exit_code == 1 and "PERMISSION_DENIED" in denied.output and "gw-1 (roles: gateway)" in denied.output
    assert "release-manager" in denied.output
    reached = await asyncio.to_thread(promote, LINELOOP_TOKEN=pki.token(["release-manager"], subject="rm-1"))
    assert reached.exit_code == 1 and "reached Promote as rm-1" in reached.output


async def test_auth_init_makes_an_issuer_whose_tokens_the_servers_accept(tmp_path):
    folder = tmp_path / "auth"
    result = await asyncio.to_thread(CliRunner().invoke, lineloop_cli, ["auth", "init", str(folder), "--issuer", "plant-1"])
    assert result.exit_code == 0, result.output
    key_before = (folder / "signing.key").read_bytes()
    verifier = TokenVerifier(issuer="plant-1", audience="lineloop", jwks_file=folder / "service" / "jwks.json")
    for role in access.ROLES:
        identity = verifier.verify((folder / "tokens" / f"{role}.jwt").read_text().strip())
        assert (identity.name, identity.roles) == (f"local-{role}", frozenset({role}))
    assert verifier.verify((folder / "service" / "token").read_text().strip()).roles == {"service"}
    modes = {name: oct((folder / name).stat().st_mode & 0o777) for name in ("signing.key", "tokens/admin.jwt", "service/token")}
    assert modes == {"signing.key": "0o600", "tokens/admin.jwt": "0o600", "service/token": "0o640"}
    # again: the key is kept, so earlier tokens still verify
    old_token = (folder / "tokens" / "admin.jwt").read_text().strip()
    assert (await asyncio.to_thread(CliRunner().invoke, lineloop_cli, ["auth", "init", str(folder), "--issuer", "plant-1"])).exit_code == 0
    assert (folder / "signing.key").read_bytes() == key_before
    assert TokenVerifier(issuer="plant-1", audience="lineloop", jwks_file=folder / "service" / "jwks.json").verify(old_token).name == "local-admin"
    with pytest.raises(ValueError, match="lineloop auth init"):
        SecuritySettings(auth_mode="required", auth_issuer="plant-1", auth_audience="lineloop",
                         auth_jwks_file=folder / "missing.json")


def test_auth_off_warns_that_the_api_is_open(caplog):
    with caplog.at_level("WARNING", logger="lineloop.runtime.auth"):
        assert interceptors("registry", SecuritySettings()) == []
    assert any("registry: gRPC API is UNAUTHENTICATED (LINELOOP_AUTH_MODE=off)" in r.getMessage() for r in caplog.records)
