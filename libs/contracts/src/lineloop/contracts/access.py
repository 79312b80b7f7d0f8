"""Who may call which rpc, read from the `(lineloop.v1.access)` options in proto/lineloop/v1.

The role x method table is declared once, on the rpcs themselves; this module only indexes
it for the server's authorisation interceptor (lineloop.runtime.auth), the docs
(`python -m lineloop.contracts.access` prints docs/security.md's table) and the tests.

    python -m lineloop.contracts.access   # the Markdown table
"""

from __future__ import annotations

import sys

from google.protobuf.descriptor import FileDescriptor

from lineloop.v1 import (
    compiler_pb2, ingest_pb2, labeling_pb2, monitor_pb2, options_pb2, registry_pb2, training_pb2,
)

ADMIN = "admin"
# Every role a credential may carry. `admin` may call every rpc, so it is never listed on one.
ROLES = ("gateway", "annotator", "ml-engineer", "release-manager", "service", ADMIN)
# Services every caller may reach without credentials: probes and tooling need them, and
# neither changes or reveals any state of the line.
OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
CONTRACT_FILES: tuple[FileDescriptor, ...] = tuple(
    m.DESCRIPTOR for m in (ingest_pb2, labeling_pb2, training_pb2, compiler_pb2, registry_pb2, monitor_pb2))


def _table() -> dict[str, tuple[str, ...]]:
    """`/lineloop.v1.RegistryService/Promote` -> the roles it declares (admin implied, not listed)."""
    found: dict[str, tuple[str, ...]] = {}
    for file in CONTRACT_FILES:
        for service in file.services_by_name.values():
            for method in service.methods:
                roles = tuple(method.GetOptions().Extensions[options_pb2.access].roles)
                unknown = sorted(set(roles) - set(ROLES))
                if unknown:
                    raise ValueError(f"{service.full_name}.{method.name} names unknown roles {unknown}; known: {ROLES}")
                found[f"/{service.full_name}/{method.name}"] = roles
    return found


METHOD_ROLES: dict[str, tuple[str, ...]] = _table()


def allowed_roles(method: str) -> tuple[str, ...]:
    """The roles that may call `method` (a gRPC path): its declared roles and admin; admin only if it declares none."""
    return (*METHOD_ROLES.get(method, ()), ADMIN)


def is_open(method: str) -> bool:
    """Whether `method` (a gRPC path) needs no credentials: health checks and reflection."""
    return method.lstrip("/").split("/", 1)[0] in OPEN_SERVICES


def markdown_table() -> str:
    """The role x method table as Markdown, one row per rpc (docs/security.md embeds it)."""
    lines = ["| rpc | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
    for method, roles in METHOD_ROLES.items():
        service, name = method.lstrip("/").split("/")
        cells = ["yes" if role in roles or role == ADMIN else "" for role in ROLES]
        lines.append(f"| {service.removeprefix('lineloop.v1.')}.{name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
