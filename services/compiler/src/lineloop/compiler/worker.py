"""Build workers: claim queued builds this host can run, build them in a thread, publish the result.

Handlers and the Compile RPC only queue builds (a row in the same transaction as the inbox
record); builds run here, off the event loop and outside any transaction. The result and its
`models.compiled.v1` are written in one transaction (outbox), so a crash never publishes a
build that is not recorded, nor records one that is never published.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from datetime import timedelta

from opentelemetry import metrics

from lineloop.bus import Bus
from lineloop.compiler import state
from lineloop.compiler.builds import BuildEnvironment, run_build
from lineloop.compiler.profiles import ProfileCatalogue
from lineloop.compiler.tensorrt_builds import capability
from lineloop.storage.sql import Database, utcnow
from lineloop.v1.events_pb2 import BuildStatus, ModelCompiled

log = logging.getLogger(__name__)

_meter = metrics.get_meter("lineloop.compiler")
builds_finished = _meter.create_counter(
    "lineloop.compiler.builds", unit="{build}", description="Builds finished. Attributes: target, status.",
)
build_duration = _meter.create_histogram(
    "lineloop.compiler.build.duration", unit="s", description="Build + verification time. Attributes: target, status.",
    explicit_bucket_boundaries_advisory=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)


class BuildWorker:
    def __init__(self, db: Database, bus: Bus, env: BuildEnvironment, catalogue: ProfileCatalogue, *,
                 concurrency: int = 1, poll_interval_s: float = 5.0, claim_timeout_s: float = 1800.0) -> None:
        self.db = db
        self.bus = bus
        self.env = env
        self.catalogue = catalogue
        self.worker_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.claim_timeout = timedelta(seconds=claim_timeout_s)
        # A TensorRT profile is built only by a worker whose GPU and TensorRT match it.
        self.unavailable = {
            name: check.reason
            for name, profile in catalogue.profiles.items()
            if profile.runtime == "tensorrt" and not (check := capability(profile)).available
        }
        self.buildable = set(catalogue.profiles) - set(self.unavailable)
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        for name, reason in self.unavailable.items():
            log.info("target %s is not built by this worker: %s", name, reason)
        self._tasks = [asyncio.create_task(self._run(), name=f"build-worker-{i}") for i in range(self.concurrency)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def wait_finished(self, build_ids: list[str], timeout_s: float) -> None:
        """Until every build is done (here or on another replica) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.db.session() as session:
                if all((found := state.get_build(session, b)) is None or found[0] == state.DONE for b in build_ids):
                    return
            self._finished.clear()
            try:
                await asyncio.wait_for(self._finished.wait(), timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                claimed = await self._claim()
            except Exception:
                log.exception("claiming a build failed; retrying")
                claimed = None
            if claimed is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
                except TimeoutError:
                    pass
                continue
            await self._build(*claimed)

    async def _claim(self) -> tuple[str, str, str, str] | None:
        async with self.db.write() as session:
            return state.claim_next(session, self.worker_id, self.buildable, utcnow() - self.claim_timeout)

    async def _build(self, build_id: str, model_name: str, version: str, target: str) -> None:
        started = time.perf_counter()
        with self.db.session() as session:
            model = state.get_model(session, model_name, version)
        if model is None:  # cannot happen: builds are queued with their model
            result = ModelCompiled(model_name=model_name, version=version, target=target, build_id=build_id,
                                   status=BuildStatus.BUILD_STATUS_FAILED, reason="model version not recorded")
        else:
            log.info("building %s %s for %s (%s)", model_name, version, target, build_id)
            try:
                result = await asyncio.to_thread(run_build, self.env, model, self.catalogue.get(target), build_id)
            except Exception as err:  # the store failed mid-publish: record it; Compile retries failed builds
                log.exception("build %s could not be published", build_id)
                result = ModelCompiled(model_name=model_name, version=version, target=target, build_id=build_id,
                                       status=BuildStatus.BUILD_STATUS_FAILED, reason=f"{type(err).__name__}: {err}")
        async with self.db.write() as session:
            state.finish(session, build_id, result)
            self.bus.add_to_outbox(session, result)
        if self.bus.relay is not None:
            self.bus.relay.wake()
        status = BuildStatus.Name(result.status)
        builds_finished.add(1, {"target": target, "status": status})
        build_duration.record(time.perf_counter() - started, {"target": target, "status": status})
        log.info("build %s %s %s: %s %s", build_id, model_name, target, status, result.reason)
        self._finished.set()
