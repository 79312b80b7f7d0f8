"""Why a message cannot be processed."""

from __future__ import annotations


class Reject(Exception):
    """A message that can never be processed: it goes to `<topic>.dlq`, once.

    `reason` is a short machine-readable code (it becomes the `dlq_reason`
    header and a metric label); `detail` is for people.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
