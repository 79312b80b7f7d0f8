"""Fixtures for ingest tests (helpers: lineloop.ingest.testing)."""

import pytest

from lineloop.ingest.testing import uid


@pytest.fixture
def line() -> str:
    return uid("line")
