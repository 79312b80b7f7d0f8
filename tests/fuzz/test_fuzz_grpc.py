"""Every gRPC request type of every service, generated from its descriptor, against the
service's servicer on a real grpc.aio server (tests/fuzz/services.py).

Outcome per case: OK, or a specific status code with a message. UNKNOWN and INTERNAL (an
exception escaped the servicer), UNIMPLEMENTED and DATA_LOSS are findings; so is a call
that does not answer, and a server that stops answering after the fuzz.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from lineloop.v1 import compiler_pb2, ingest_pb2, labeling_pb2, monitor_pb2, registry_pb2, training_pb2
from tests.fuzz.harness import run_cases_async
from tests.fuzz.services import hosted
from tests.fuzz.strategies import messages

MODULES = {
    "ingest": ingest_pb2, "labeling": labeling_pb2, "training": training_pb2,
    "compiler": compiler_pb2, "registry": registry_pb2, "monitor": monitor_pb2,
}
METHODS = [
    (service, method.full_name)
    for service, module in MODULES.items()
    for svc in module.DESCRIPTOR.services_by_name.values()
    for method in svc.methods
]
FINDINGS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS}
UNARY_TIMEOUT_S = 30.0
STREAM_WINDOW_S = 0.5  # a server stream (WatchAlerts, WatchRun) is read this long, then left
STREAM_MAX = {"lineloop.v1.UploadFrameRequest": 3}  # requests per fuzzed client stream, at most (default 4)


def _method(full_name: str):
    service_name, method_name = full_name.rsplit(".", 1)
    for module in MODULES.values():
        for svc in module.DESCRIPTOR.services_by_name.values():
            if svc.full_name == service_name:
                return svc.methods_by_name[method_name]
    raise KeyError(full_name)


async def call(channel: grpc.aio.Channel, method, request) -> str:
    """One call of any shape; the outcome label ("grpc:OK", "grpc:NOT_FOUND", ...)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_cls = GetMessageClass(method.output_type)
    kwargs = {"request_serializer": lambda m: m.SerializeToString(), "response_deserializer": response_cls.FromString}
    try:
        if method.client_streaming:
            await channel.stream_unary(path, **kwargs)(iter(request), timeout=UNARY_TIMEOUT_S)
        elif method.server_streaming:
            stream = channel.unary_stream(path, **kwargs)(request, timeout=STREAM_WINDOW_S)
            try:
                async for _ in stream:
                    pass
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return "grpc:streaming"  # our window closed: the server was still streaming (or waiting)
                raise
        else:
            await channel.unary_unary(path, **kwargs)(request, timeout=UNARY_TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        code = err.code()
        assert code not in FINDINGS, f"{method.full_name} -> {code.name}: {err.details()}"
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{method.full_name} did not answer in {UNARY_TIMEOUT_S} s"
        assert err.details(), f"{method.full_name} -> {code.name} without a message"
        return f"grpc:{code.name}"
    return "grpc:OK"


def requests(method) -> st.SearchStrategy:
    one = messages(method.input_type)
    if method.client_streaming:
        return st.lists(one, max_size=STREAM_MAX.get(method.input_type.full_name, 4))
    return one


def test_every_method_is_fuzzed():
    declared = {m.full_name for module in MODULES.values() for s in module.DESCRIPTOR.services_by_name.values()
                for m in s.methods}
    assert declared == {name for _, name in METHODS} and len(METHODS) >= 20


@pytest.mark.parametrize(("service", "method_name"), METHODS, ids=[m.rsplit(".", 2)[-2] + "." + m.rsplit(".", 1)[-1]
                                                                   for _, m in METHODS])
async def test_request_gets_ok_or_a_specific_status(service, method_name, stack, tmp_path):
    method = _method(method_name)
    async with hosted(service, stack, tmp_path) as host:
        async def check(request) -> str:
            return await call(host.channel, method, request)

        await run_cases_async(f"grpc:{method_name.removeprefix('lineloop.v1.')}", requests(method), check)

        # Still answering: the same method with an empty request gets a status, not a dead server.
        empty = [] if method.client_streaming else GetMessageClass(method.input_type)()
        outcome = await call(host.channel, method, empty)
        assert outcome.startswith("grpc:"), outcome


async def test_a_stage_number_the_registry_does_not_know_is_invalid_argument(stack, tmp_path):
    """Found by this fuzz: ListVersions(stage=-1) and Promote(to_stage=-1) raised KeyError (UNKNOWN)."""
    list_versions = _method("lineloop.v1.RegistryService.ListVersions")
    promote = _method("lineloop.v1.RegistryService.Promote")
    async with hosted("registry", stack, tmp_path) as host:
        assert await call(host.channel, list_versions, registry_pb2.ListVersionsRequest(stage=-1)) == "grpc:INVALID_ARGUMENT"
        request = registry_pb2.PromoteRequest(model_name="apples", version="1", to_stage=99, actor="fuzz")
        assert await call(host.channel, promote, request) == "grpc:INVALID_ARGUMENT"
