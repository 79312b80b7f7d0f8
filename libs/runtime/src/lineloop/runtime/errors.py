"""gRPC errors with machine-readable details (google.rpc.ErrorInfo)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lineloop.telemetry import metrics

DOMAIN = "lineloop"


async def abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str, message: str, *,
    service: str = "", **metadata: str,
) -> None:
    """End the RPC with `code`, a readable `message` and ErrorInfo(reason, metadata); counted.

    `reason` is an UPPER_SNAKE code callers can branch on (e.g. LEASE_EXPIRED).
    """
    metrics.rejections.add(1, {"service": service or "grpc", "reason": reason})
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata={k: str(v) for k, v in metadata.items()}))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])
    await context.abort_with_status(rpc_status.to_status(status))


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo a lineloop server attached to `error`, if any (client side)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None
