"""Fixtures for ingest tests (helpers: lineloop.ingest.testing)."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from lineloop.ingest.testing import uid


@pytest.fixture
def line() -> str:
    return uid("line")


@dataclass(frozen=True)
class Kcat:
    """kcat, the command-line Kafka client a gateway operator would use, on a recent librdkafka.

    Debian's kcat links librdkafka 2.0.2, which fails its ApiVersionRequest against the
    embedded broker (shared STACK.md); the librdkafka inside the confluent-kafka wheel works.
    The wheel renames the library (auditwheel), so it is linked under its usual name,
    librdkafka.so.1, in a directory put first on LD_LIBRARY_PATH.
    """

    executable: str
    env: dict[str, str]
    librdkafka_version: str

    async def produce(self, bootstrap: str, topic: str, value_file: Path, *, key: str,
                      headers: Mapping[str, str] | None = None) -> None:
        """Publish the file's content as one record (kcat -P with a file argument)."""
        argv = [self.executable, "-P", "-b", bootstrap, "-t", topic, "-k", key,
                "-X", "partitioner=murmur2_random"]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}={value}"]
        argv.append(str(value_file))
        process = await asyncio.create_subprocess_exec(
            *argv, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, f"{' '.join(argv)} exited {process.returncode}: {err.decode()}{out.decode()}"


@pytest.fixture(scope="session")
def kcat(tmp_path_factory: pytest.TempPathFactory) -> Kcat:
    executable = shutil.which("kcat") or shutil.which("kafkacat")
    if executable is None:
        pytest.skip("kcat not installed (Debian: apt-get install kcat)")
    spec = importlib.util.find_spec("confluent_kafka")
    assert spec is not None, "confluent-kafka (its librdkafka) is missing: pip install -r tests/requirements.txt"
    import confluent_kafka

    libs = Path(next(iter(spec.submodule_search_locations))).parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    assert found, f"no librdkafka in {libs}"
    lib_dir = tmp_path_factory.mktemp("librdkafka")
    (lib_dir / "librdkafka.so.1").symlink_to(found[0])
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(lib_dir)}
    version = subprocess.run([executable, "-V"], env=env, capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"librdkafka (\d+\.\d+\.\d+)", version)
    wheel_version = confluent_kafka.libversion()[0]
    assert match and match.group(1) == wheel_version, f"kcat does not use librdkafka {wheel_version}: {version}"
    return Kcat(executable, env, wheel_version)
