"""Health checks: does each server answer its own protocol yet."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
from aiokafka.client import AIOKafkaClient
from grpc_health.v1 import health_pb2, health_pb2_grpc


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status `url` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unix_socket_live(path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


def s3_ready(endpoint: str) -> bool:
    # An anonymous ListBuckets is refused (403) once the S3 gateway is up: that is an answer.
    return http_status(endpoint + "/") is not None


def triton_ready(http_address: str) -> bool:
    return http_status(f"http://{http_address}/v2/health/ready") == 200


def kafka_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True once the broker answers a metadata request."""
    host, _, port = bootstrap.rpartition(":")
    if not port_open(host, int(port)):
        return False  # aiokafka logs an error for each refused connection: skip those

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(client.bootstrap(), timeout)
            return True
        except Exception:
            return False
        finally:
            await client.close()

    # A thread of its own: callers may be inside a running event loop (async tests).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


def grpc_serving(address: str, timeout: float = 1.0) -> bool:
    """True when the grpc.health.v1 check (whole server) answers SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
