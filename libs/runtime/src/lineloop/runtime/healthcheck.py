"""`python -m lineloop.runtime.healthcheck PORT [HOST]`: exit 0 when the gRPC health service says SERVING.

Used by Docker HEALTHCHECK, compose and `lineloop up`.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(port: int, host: str = "127.0.0.1", timeout_s: float = 3.0) -> str:
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m lineloop.runtime.healthcheck PORT [HOST]", file=sys.stderr)
        return 2
    try:
        status = check(int(argv[0]), argv[1] if len(argv) > 1 else "127.0.0.1")
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
