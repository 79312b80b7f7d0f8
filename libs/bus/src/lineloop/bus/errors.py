"""Why a message cannot be processed, and failures that are not the message's fault."""

from __future__ import annotations

import grpc
from sqlalchemy.exc import DBAPIError, OperationalError

from lineloop.storage.objects import ObjectStoreUnavailable

_UNAVAILABLE_RPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# SQLite reports a missing table and a busy file with the same OperationalError: only these retry.
_SQLITE_BUSY = ("database is locked", "database table is locked", "unable to open database file", "disk i/o error")


class Reject(Exception):
    """A message that can never be processed: it goes to `<topic>.dlq`, once.

    `reason` is a short machine-readable code (it becomes the `dlq_reason`
    header and a metric label); `detail` is for people.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` (or what raised it) says a dependency is down or busy, not that the event is bad.

    Such failures are retried until the dependency answers again instead of
    dead-lettering good events during an outage.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # the explicit `raise ... from` chain, a few links deep
        if seen is None:
            return False
        if isinstance(seen, (ObjectStoreUnavailable, ConnectionError, TimeoutError)):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, OperationalError):
            if type(seen.orig).__module__ != "sqlite3":
                return True  # PostgreSQL: connection lost, server shutting down, lock timeout
            return any(m in str(seen.orig).lower() for m in _SQLITE_BUSY)
        if isinstance(seen, grpc.RpcError) and callable(getattr(seen, "code", None)) and seen.code() in _UNAVAILABLE_RPC:
            return True
        seen = seen.__cause__
    return False
