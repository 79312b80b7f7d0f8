"""Two ingest processes in one consumer group share the partitions; each frame counts once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from sqlalchemy import create_engine, func, select

from lineloop.ingest import state
from lineloop.ingest.testing import EventReader, FAST_GROUP, frame, jpeg, publish, skip_group_to_end, uid
from lineloop.stack.config import free_ports
from lineloop.stack.probes import grpc_serving


def scraped_frames(metrics_port: int) -> float:
    """Frames this replica took from Kafka, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lineloop_ingest_frames_total{") and 'path="kafka"' in line
    )


def start_replica(stack, database_url: str, group: str, grpc_port: int, metrics_port: int, log) -> subprocess.Popen:
    env = {
        **os.environ, **stack.env(),
        "LINELOOP_LOG_FORMAT": "console",
        "LINELOOP_INGEST_DATABASE_URL": database_url,
        "LINELOOP_INGEST_CONSUMER_GROUP": group,
        "LINELOOP_INGEST_GRPC_PORT": str(grpc_port),
        "LINELOOP_INGEST_METRICS_PORT": str(metrics_port),
        **{f"LINELOOP_INGEST_{k.upper()}": str(v) for k, v in FAST_GROUP.items()},
    }
    return subprocess.Popen([sys.executable, "-m", "lineloop.ingest.main"], env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.postgres
async def test_two_replicas_share_the_load_and_ingest_each_frame_once(stack, tmp_path, line, postgres_url):
    # Replicas share one database; SQLite is one process's file, PostgreSQL is the shared kind.
    group = uid("ingest")
    database_url = postgres_url
    await skip_group_to_end(stack, group)
    grpc_a, grpc_b, metrics_a, metrics_b = free_ports(4)
    replicas = []
    with open(tmp_path / "replicas.log", "wb") as log:
        try:
            # One after the other: concurrent first-time schema creation on PostgreSQL races
            # (lineloop.storage.sql.Database.migrate; reported to its owner).
            for grpc_port, metrics_port in ((grpc_a, metrics_a), (grpc_b, metrics_b)):
                replicas.append(start_replica(stack, database_url, group, grpc_port, metrics_port, log))
                deadline = time.monotonic() + 60
                while not grpc_serving(f"127.0.0.1:{grpc_port}"):
                    assert replicas[-1].poll() is None, (tmp_path / "replicas.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "replica did not start"
                    await asyncio.sleep(0.2)

            frames = [frame(jpeg(seed=300 + i, size=48), line=line, camera=f"cam-{i % 6}") for i in range(36)]
            async with EventReader(stack) as events:
                # In waves: the group settles its partitions between the two joins meanwhile.
                for wave in range(0, len(frames), 6):
                    await publish(stack, frames[wave : wave + 6])
                    await asyncio.sleep(0.5)
                await events.wait_for([f.frame_id for f in frames], timeout=90)
                await events.settle(2.0)
            counts = [scraped_frames(metrics_a), scraped_frames(metrics_b)]
        finally:
            for replica in replicas:
                stop(replica)

    for f in frames:
        assert len(events.ingested[f.frame_id]) == 1, f.frame_id
    assert sum(counts) >= len(frames) and all(c > 0 for c in counts), counts
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(state.frames).where(state.frames.c.line_id == line)).scalar()
    engine.dispose()
    assert rows == len(frames)
    assert all(r.returncode == 0 for r in replicas), [r.returncode for r in replicas]
