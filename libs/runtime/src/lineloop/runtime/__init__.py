"""Hosting a lineloop service: settings from the environment, gRPC, bus, lifecycle.

`Service` is imported on first use: command-line tools import the light parts
(settings, error details) without the server stack.
"""

from lineloop.runtime.errors import abort, error_info
from lineloop.runtime.settings import BUCKETS, ServiceSettings, StackSettings, service_config

__all__ = ["BUCKETS", "Service", "ServiceSettings", "StackSettings", "abort", "error_info", "service_config"]


def __getattr__(name: str):
    if name == "Service":
        from lineloop.runtime.service import Service

        return Service
    raise AttributeError(f"module 'lineloop.runtime' has no attribute {name!r}")
