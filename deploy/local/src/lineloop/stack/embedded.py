"""The embedded stack: S3 store, Kafka-API broker and Triton on 127.0.0.1, as processes.

Start order: the S3 store first; the broker keeps its data there and Triton reads its model
repository from there, so both start together once the buckets exist. Everything lives under one state directory:
data, logs, pidfiles.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from pathlib import Path

import urllib3
from minio import Minio

from lineloop.stack import probes, servers
from lineloop.stack.config import BUCKETS, HOST, TANSU_BUCKET, StackConfig
from lineloop.stack.process import ManagedProcess, port_holders, state_lock, wait_until

Report = Callable[[str], None]

# The watchdog (`heal`): the object store is restarted after this many write probes in a row
# failed while its process runs, and nothing is restarted on a disk with less free space than this.
S3_REFUSALS_TO_RESTART = 3
MIN_FREE_BYTES = 64 << 20
# Write probes go to Tansu's bucket, outside the `clusters/` it reads, in this many folders: the
# filer store (leveldb2) keeps each folder's entries in one of 8 databases by a hash of the folder,
# and a full disk wedges them one by one, so one probe key can pass while Tansu's folders fail.
# 64 folders reach all 8 with a chance of 1 - 8 * (7/8)^64 > 0.9998.
WRITE_PROBE_PREFIX = "lineloop-stack/write-probe"
WRITE_PROBE_FOLDERS = 64
WATCHDOG = "watchdog"


class StackError(RuntimeError):
    pass


@dataclasses.dataclass
class ServerStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    addresses: dict[str, int]
    log: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class EmbeddedStack:
    """Start, stop and look at one stack. `up` and `down` are idempotent."""

    def __init__(self, config: StackConfig, die_with_parent: bool = False, ready_timeout: float = 60.0,
                 watchdog: bool = False) -> None:
        self.config = config
        self.die_with_parent = die_with_parent
        self.ready_timeout = ready_timeout
        # `up` also starts a watchdog process (`lineloop.stack.watchdog`, `heal` every few seconds):
        # what a restart policy and a liveness probe do for these servers in compose and Kubernetes.
        self.watchdog = watchdog
        self.startup_seconds: dict[str, float] = {}
        self.write_probe_timeout_s = 5.0
        self._s3_refusals = 0

    # Attributes tests and tools read, named as the README's environment.
    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def kafka_bootstrap(self) -> str:
        return self.config.kafka_bootstrap

    @property
    def s3_endpoint(self) -> str:
        return self.config.s3_endpoint

    @property
    def s3_access_key(self) -> str:
        return self.config.s3_access_key

    @property
    def s3_secret_key(self) -> str:
        return self.config.s3_secret_key

    @property
    def s3_region(self) -> str:
        return self.config.s3_region

    @property
    def triton_grpc(self) -> str:
        return self.config.triton_grpc

    @property
    def triton_http(self) -> str:
        return self.config.triton_http

    @property
    def triton_repository(self) -> str:
        """`s3://http://127.0.0.1:<port>/lineloop-triton`; `lineloop.serving.open_repository` writes there."""
        return self.config.triton_repository

    def env(self) -> dict[str, str]:
        return self.config.env()

    def s3_client(self, http_client: urllib3.PoolManager | None = None) -> Minio:
        return Minio(
            f"{HOST}:{self.config.s3_port}",
            access_key=self.config.s3_access_key,
            secret_key=self.config.s3_secret_key,
            region=self.config.s3_region,
            secure=False,
            http_client=http_client,
        )

    def specs(self) -> list[servers.ServerSpec]:
        return [servers.seaweedfs(self.config), servers.triton(self.config), servers.tansu(self.config)]

    def _process(self, spec: servers.ServerSpec) -> ManagedProcess:
        return ManagedProcess(spec.name, self.config.run_dir, self.config.logs_dir / f"{spec.name}.log")

    def up(self, report: Report = lambda line: None) -> dict[str, float]:
        """Start what is not running; wait until every server answers.

        Returns the start-up seconds of each server started now (empty when all were up).
        """
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with state_lock(self.config.run_dir):
            timings = self._up(report)
            if self.watchdog:
                self._start_watchdog(report)
            return timings

    def _watchdog_process(self) -> ManagedProcess:
        return ManagedProcess(WATCHDOG, self.config.run_dir, self.config.logs_dir / f"{WATCHDOG}.log")

    def _start_watchdog(self, report: Report) -> None:
        process = self._watchdog_process()
        if process.running() is None:
            process.start([sys.executable, "-m", "lineloop.stack.watchdog"], {**os.environ, **self.config.env()},
                          cwd=self.config.state_dir, die_with_parent=self.die_with_parent)
            report(f"{WATCHDOG}: started (log {process.log_file})")

    def heal(self, report: Report = lambda line: None) -> list[str]:
        """One watchdog pass: restart a server that is not running, and the object store when it
        runs but has refused `S3_REFUSALS_TO_RESTART` write probes in a row (SeaweedFS's filer
        store keeps a failed write's error, e.g. after a full disk, until it is restarted). Not on
        a full disk: a restart there fails again and drops what is in flight. Returns the names
        restarted. Holds the state lock, so it never runs while `up` or `down` does."""
        restarted = []
        with state_lock(self.config.run_dir):
            for spec in self.specs():
                process = self._process(spec)
                if process.running() is None:
                    why = "not running"
                elif spec.name == "s3" and not self.store_writes():
                    self._s3_refusals += 1
                    if self._s3_refusals < S3_REFUSALS_TO_RESTART:
                        continue
                    why = f"running but refused {self._s3_refusals} writes in a row"
                else:
                    if spec.name == "s3":
                        self._s3_refusals = 0
                    continue
                free = shutil.disk_usage(self.config.state_dir).free
                if free < MIN_FREE_BYTES:
                    report(f"{spec.name}: {why}; not restarted: {free >> 20} MiB free in {self.config.state_dir}")
                    continue
                report(f"{spec.name}: {why}: restarting")
                process.stop(spec.stop_timeout)
                spec.cleanup()
                started: dict = {}
                self._launch(spec, started, report)
                self._await(spec, started, report)
                if spec.name == "s3":
                    self._s3_refusals = 0
                restarted.append(spec.name)
        return restarted

    def store_writes(self) -> bool:
        """Whether the object store takes a write in every one of its metadata databases."""
        client = self.s3_client(urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=2.0, read=self.write_probe_timeout_s), retries=False))
        try:
            for folder in range(WRITE_PROBE_FOLDERS):
                client.put_object(TANSU_BUCKET, f"{WRITE_PROBE_PREFIX}/{folder}/probe", io.BytesIO(b"ok"), 2)
            return True
        except Exception:
            return False

    def _up(self, report: Report) -> dict[str, float]:
        s3_spec, triton_spec, kafka_spec = self.specs()
        started: dict[str, tuple[float, object]] = {}
        try:
            self._launch(s3_spec, started, report)
            self._await(s3_spec, started, report)
            self._ensure_buckets(report)
            for spec in (kafka_spec, triton_spec):
                self._launch(spec, started, report)
            for spec in (kafka_spec, triton_spec):
                self._await(spec, started, report)
        except BaseException:
            # A half-started stack is worse than none: stop what this call started.
            for spec in (kafka_spec, triton_spec, s3_spec):
                if spec.name in started:
                    self._process(spec).stop(spec.stop_timeout)
                    spec.cleanup()
            raise
        return {name: self.startup_seconds[name] for name in started}

    def _launch(self, spec: servers.ServerSpec, started: dict, report: Report) -> None:
        process = self._process(spec)
        if process.running() is not None:
            report(f"{spec.name}: already running")
            return
        busy = {label: port for label, port in spec.ports.items() if probes.port_open(HOST, port)}
        if busy:
            raise StackError(f"{spec.name}: not started, port(s) in use: " + "; ".join(
                f"{label} {port} is held by {port_holders(port) or 'a process that has just exited'}"
                for label, port in busy.items()
            ))
        spec.prepare()
        report(f"{spec.name}: starting")
        handle = process.start(spec.argv, spec.env, cwd=self.config.state_dir, die_with_parent=self.die_with_parent)
        started[spec.name] = (time.monotonic(), handle)

    def _await(self, spec: servers.ServerSpec, started: dict, report: Report) -> None:
        process = self._process(spec)
        since, handle = started.get(spec.name, (time.monotonic(), process.running()))
        try:
            wait_until(spec.ready, self.ready_timeout, proc=handle)
        except (TimeoutError, RuntimeError) as err:
            raise StackError(f"{spec.name}: {err}; log {process.log_file}:\n{process.log_tail()}") from err
        if spec.name in started:
            self.startup_seconds[spec.name] = time.monotonic() - since
            report(f"{spec.name}: ready in {self.startup_seconds[spec.name]:.2f} s")

    def _ensure_buckets(self, report: Report) -> None:
        client = self.s3_client()
        for bucket in (TANSU_BUCKET, *BUCKETS):
            errors: list[Exception] = []
            # The S3 port answers before the filer behind it is ready for writes.
            try:
                wait_until(lambda: _try_make_bucket(client, bucket, errors), self.ready_timeout, interval=0.1)
            except TimeoutError as err:
                last = errors[-1] if errors else "no answer"
                raise StackError(f"s3: could not create bucket {bucket!r} ({err}): {last}") from err
        report(f"s3: buckets {', '.join((TANSU_BUCKET, *BUCKETS))}")

    def down(self, report: Report = lambda line: None) -> list[str]:
        """Stop the servers this state directory started; returns the names stopped."""
        with state_lock(self.config.run_dir):
            return self._down(report)

    def _down(self, report: Report) -> list[str]:
        s3_spec, triton_spec, kafka_spec = self.specs()
        if self._watchdog_process().stop():  # first: it would start again what is stopped below
            report(f"{WATCHDOG}: stopped")

        def stop(spec: servers.ServerSpec) -> str | None:
            if self._process(spec).stop(spec.stop_timeout):
                spec.cleanup()
                report(f"{spec.name}: stopped")
                return spec.name
            report(f"{spec.name}: not running")
            return None

        # The broker first, while the S3 store it flushes to is still up; then the others together.
        stopped = [stop(kafka_spec)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            stopped += list(pool.map(stop, (triton_spec, s3_spec)))
        return [name for name in stopped if name]

    def stop_server(self, name: str) -> bool:
        """Stop one server ("s3", "kafka", "triton"), e.g. to test a restart; `up` brings it back."""
        spec = next((spec for spec in self.specs() if spec.name == name), None)
        if spec is None:
            raise ValueError(f"no server {name!r}; servers: {[s.name for s in self.specs()]}")
        stopped = self._process(spec).stop(spec.stop_timeout)
        spec.cleanup()
        return stopped

    def status(self) -> list[ServerStatus]:
        result = []
        for spec in self.specs():
            process = self._process(spec)
            proc = process.running()
            result.append(
                ServerStatus(
                    name=spec.name,
                    running=proc is not None,
                    healthy=proc is not None and spec.ready(),
                    pid=None if proc is None else proc.pid,
                    addresses=spec.ports,
                    log=str(process.log_file),
                )
            )
        return result


def _try_make_bucket(client: Minio, bucket: str, errors: list[Exception]) -> bool:
    try:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        return True
    except Exception as err:  # retried until the timeout; the last one is reported
        errors.append(err)
        return False
