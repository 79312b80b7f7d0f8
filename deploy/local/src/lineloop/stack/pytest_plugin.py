"""pytest plugin for every lineloop test (loaded by tests/pytest.ini).

Fixtures:
- `stack` (session): the embedded stack on free ports in a temporary state directory.
- `postgres` (session), `postgres_url` (function: a fresh empty database).
- `database_url` (function, parametrised): a SQLite file and a PostgreSQL database, so state
  tests run on both; the postgres case is marked `postgres` and skipped, with the reason,
  when the PostgreSQL binaries are missing (`deploy/local/system-deps.sh` installs them).
The `gpu` marker: tests skip with "no CUDA device" where there is none.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineloop.stack.config import StackConfig
from lineloop.stack.embedded import EmbeddedStack
from lineloop.stack.postgres import PostgresCluster, find_bin_dir


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        nvidia_smi = shutil.which("nvidia-smi")
        if nvidia_smi is None:
            return False
        return subprocess.run([nvidia_smi, "-L"], capture_output=True).returncode == 0
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    embedded = EmbeddedStack(
        StackConfig.on_free_ports(tmp_path_factory.mktemp("stack")),
        # The servers die with the test process even when it is killed outright.
        die_with_parent=True,
    )
    try:
        embedded.up()
        yield embedded
    finally:
        embedded.down()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: run deploy/local/system-deps.sh")
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    url = postgres.create_database()
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres_url")
