"""Hosting a lineloop service: settings from the environment, gRPC, bus, lifecycle."""

from lineloop.runtime.errors import abort, error_info
from lineloop.runtime.service import Service
from lineloop.runtime.settings import BUCKETS, ServiceSettings, StackSettings, service_config

__all__ = ["BUCKETS", "Service", "ServiceSettings", "StackSettings", "abort", "error_info", "service_config"]
