"""Fuzz tests (issue 10): see harness.py for how they run and tests/fuzz/run_fuzz.py for the long run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests.fuzz.*` helpers, however pytest was started

from tests.fuzz import harness  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def fuzz_report():
    yield
    harness.write_report()
