"""Training + registry on the real stack: datasets become runs, runs become gated versions.

Tiny on purpose (32x32 frames, width-4 net, a few epochs): these tests check the
flow and the records, not model quality.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid

import grpc
import pytest
import pytest_asyncio

from lineloop.bus import Bus
from lineloop.model.manifest import FrameCache
from lineloop.model.synthetic import SyntheticDataset, write_dataset
from lineloop.registry.deployer import NoDeployment
from lineloop.registry.main import build as build_registry
from lineloop.registry.settings import RegistrySettings
from lineloop.runtime import Service, StackSettings, error_info
from lineloop.storage.objects import ObjectStore
from lineloop.storage.sql import Database
from lineloop.training import state
from lineloop.training.main import build as build_training
from lineloop.training.settings import TrainingSettings
from lineloop.training.worker import RunWorker
from lineloop.v1 import registry_pb2 as rpb
from lineloop.v1 import training_pb2 as pb
from lineloop.v1.common_pb2 import Stage
from lineloop.v1.events_pb2 import TrainingRequested
from lineloop.v1.registry_pb2_grpc import RegistryServiceStub
from lineloop.v1.training_pb2_grpc import TrainingServiceStub

pytestmark = pytest.mark.slow
PER_CLASS = {"ok": 10, "bruise": 5, "rot": 5, "scab": 5}
TINY = {"epochs": "3", "batch_size": "8", "width": "4", "input_size": "32", "patience": "3"}
S = pb.RunState


def stack_settings(stack) -> StackSettings:
    return StackSettings(kafka_bootstrap=stack.kafka_bootstrap, s3_endpoint=stack.s3_endpoint,
                         s3_access_key=stack.s3_access_key, s3_secret_key=stack.s3_secret_key,
                         state_dir=stack.state_dir, log_format="console")


class Services:
    def __init__(self, training, registry, store, bus) -> None:
        self.training_service, self.registry_service, self.store, self.bus = training, registry, store, bus
        self.training: TrainingServiceStub
        self.registry: RegistryServiceStub

    async def runs(self, model: str) -> list[pb.Run]:
        return list((await self.training.ListRuns(pb.ListRunsRequest(model_name=model))).runs)

    async def versions(self, model: str) -> list[rpb.ModelVersion]:
        return list((await self.registry.ListVersions(rpb.ListVersionsRequest(model_name=model))).versions)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def services(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("training-flow")
    common = {"grpc_port": 0, "metrics_port": None, "kafka_session_timeout_ms": 6000,
              "kafka_heartbeat_interval_ms": 1000, "poll_interval_s": 0.2, "stack": stack_settings(stack)}
    suffix = uuid.uuid4().hex[:8]
    registry = build_registry(RegistrySettings(
        database_url=f"sqlite:///{tmp / 'registry.db'}", consumer_group=f"registry-{suffix}", cache_dir=tmp / "rcache",
        floor_accuracy=0.0, floor_ok_false_positive_rate=1.0, eval_threads=1, **common),
        deployer=NoDeployment())  # stages only: these tests run no Triton
    store = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    bus = Bus(stack.kafka_bootstrap, source="test/training")
    async with registry.running():
        training = build_training(TrainingSettings(
            database_url=f"sqlite:///{tmp / 'training.db'}", consumer_group=f"training-{suffix}",
            cache_dir=tmp / "tcache", default_params=TINY, loader_workers=0, torch_threads=1,
            registry_grpc=f"127.0.0.1:{registry.grpc_port}", **common))
        async with training.running():
            await bus.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{training.grpc_port}") as tc, \
                        grpc.aio.insecure_channel(f"127.0.0.1:{registry.grpc_port}") as rc:
                    found = Services(training, registry, store, bus)
                    found.training_target = f"127.0.0.1:{training.grpc_port}"
                    found.registry_target = f"127.0.0.1:{registry.grpc_port}"
                    found.training, found.registry = TrainingServiceStub(tc), RegistryServiceStub(rc)
                    yield found
            finally:
                await bus.stop()


async def until(fetch, check, timeout_s: float = 90.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await fetch()
        if check(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value}")
        await asyncio.sleep(0.25)


@pytest.mark.asyncio(loop_scope="session")
async def test_datasets_become_runs_and_gated_versions_with_cancel_and_queueing(services: Services):
    name = f"line-{uuid.uuid4().hex[:6]}"
    datasets = []
    for i, seed in enumerate((11, 12, 13), start=1):
        datasets.append(await asyncio.to_thread(write_dataset, services.store, name, f"v000{i}",
                                                per_class=PER_CLASS, size=32, seed=seed))

    # 1. A dataset version leads to a run, a registered version with lineage, and a gate decision.
    await services.bus.publish(datasets[0].event)
    runs = await until(lambda: services.runs(name), lambda r: r and r[0].state in (S.RUN_STATE_SUCCEEDED, S.RUN_STATE_FAILED),
                       what="the first run to end")
    first = runs[0]
    assert first.state == S.RUN_STATE_SUCCEEDED, first.error
    assert (first.dataset, first.dataset_version) == (name, "v0001")
    assert first.dataset_sha256 == datasets[0].event.manifest.sha256
    assert first.code_version and first.host
    assert first.params["epochs"] == "3" and first.params["seed"] == "1234"
    assert 1 <= len(first.epochs) <= 3
    assert all(e.frames_per_s > 0 and 0.0 <= e.data_share <= 1.0 for e in first.epochs)
    test_frames = sum(1 for line in datasets[0].manifest_lines if line["split"] == "test")
    assert first.test_metrics.samples == test_frames
    assert first.artifact_prefix == f"lineloop-models/{name}/{first.run_id}/"
    card = json.loads(services.store.get_bytes("lineloop-models", f"{name}/{first.run_id}/model_card.json"))
    assert card["dataset"]["manifest_sha256"] == first.dataset_sha256 and card["classes"] == ["bruise", "ok", "rot", "scab"]
    assert card["init"] == "scratch: no production version yet"
    assert set(card["timings"]) >= {"fetch_s", "train_s", "fit_s"} and card["host"]["cpu_count"] >= 1

    v1 = await until(lambda: services.versions(name), lambda v: v and v[0].gate.reason, what="v1 gated")
    v1 = v1[0]
    assert (v1.version, v1.run_id, v1.dataset_version, v1.parent_version) == ("1", first.run_id, "v0001", "")
    assert v1.gate.passed and v1.gate.candidate.samples == test_frames  # floors are 0 in this test
    # The registry's own onnxruntime numbers match what training measured in torch.
    assert v1.gate.candidate.accuracy == pytest.approx(first.test_metrics.accuracy, abs=1e-6)
    await until(lambda: services.versions(name), lambda v: v[0].stage == Stage.STAGE_PRODUCTION, what="v1 production")

    # 2. A long run, cancelled midway; two dataset versions arrive during it: the newer one runs next.
    long = await services.training.StartRun(pb.StartRunRequest(
        model_name=name, dataset=name, dataset_version="v0001", params={"epochs": "500", "patience": "500"},
        requested_by="test"))
    watch = services.training.WatchRun(pb.GetRunRequest(run_id=long.run_id))
    async for progress in watch:
        if progress.run.state == S.RUN_STATE_RUNNING and progress.latest.epoch >= 1:
            break
    assert progress.latest.frames_per_s > 0 and progress.latest.train_loss > 0
    watch.cancel()
    await services.bus.publish(datasets[1].event)
    await services.bus.publish(datasets[2].event)
    queued = await until(lambda: services.runs(name), lambda r: [x.dataset_version for x in r if x.state == S.RUN_STATE_QUEUED] == ["v0003"],
                         what="v0003 queued, v0002 superseded")
    superseded = next(r for r in queued if r.dataset_version == "v0002")
    assert superseded.state == S.RUN_STATE_CANCELLED and "superseded by" in superseded.error
    cancelled = await services.training.CancelRun(pb.CancelRunRequest(run_id=long.run_id, reason="operator changed lighting"))
    assert cancelled.state == S.RUN_STATE_CANCELLED and "operator changed lighting" in cancelled.error
    assert 1 <= len(cancelled.epochs) < 500

    runs = await until(lambda: services.runs(name), lambda r: any(x.dataset_version == "v0003" and x.state == S.RUN_STATE_SUCCEEDED for x in r),
                       what="v0003 trained")
    third = next(r for r in runs if r.dataset_version == "v0003")
    card = json.loads(services.store.get_bytes("lineloop-models", f"{name}/{third.run_id}/model_card.json"))
    assert card["init"].startswith("warm start from production version 1")

    versions = await until(lambda: services.versions(name), lambda v: len(v) == 2 and v[0].gate.reason, what="v2 gated")
    assert versions[0].run_id == third.run_id and versions[0].parent_version == "1"
    assert versions[0].gate.baseline_version == "1" and versions[0].gate.dataset_version == f"{name}/v0003"
    assert long.run_id not in {v.run_id for v in versions}  # the cancelled run was never registered
    assert not services.store.exists("lineloop-models", f"{name}/{long.run_id}/model.onnx")

    # The CLI shows the same records (--json for scripts).
    listed = json.loads(await cli("runs", "list", "--model", name, "--json", "--target", services.training_target))
    assert {r["run_id"]: r["state"] for r in listed}[long.run_id] == "RUN_STATE_CANCELLED"
    shown = json.loads(await cli("models", "show", name, "latest", "--json", "--target", services.registry_target))
    assert shown["run_id"] == third.run_id and shown["gate"]["baseline_version"] == "1"


async def cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "lineloop.cli.main", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.asyncio(loop_scope="session")
async def test_bad_requests_are_refused_with_reasons(services: Services):
    async def expect(call, code, reason):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code, err.value.details()
        assert error_info(err.value).reason == reason
        return err.value.details()

    details = await expect(services.training.StartRun(pb.StartRunRequest(dataset="no-such-line")),
                           grpc.StatusCode.NOT_FOUND, "UNKNOWN_DATASET")
    assert "no-such-line" in details
    details = await expect(services.training.StartRun(pb.StartRunRequest(dataset="x", params={"epochs": "many"})),
                           grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMS")
    assert "epochs" in details
    await expect(services.training.StartRun(pb.StartRunRequest(dataset="x", params={"learning_rate": "1"})),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMS")
    await expect(services.training.GetRun(pb.GetRunRequest(run_id="run-nope")), grpc.StatusCode.NOT_FOUND, "UNKNOWN_RUN")
    await expect(services.training.CancelRun(pb.CancelRunRequest(run_id="run-nope")), grpc.StatusCode.NOT_FOUND, "UNKNOWN_RUN")
    finished = next(r for r in (await services.training.ListRuns(pb.ListRunsRequest())).runs
                    if r.state == S.RUN_STATE_SUCCEEDED)
    await expect(services.training.CancelRun(pb.CancelRunRequest(run_id=finished.run_id)),
                 grpc.StatusCode.FAILED_PRECONDITION, "RUN_FINISHED")
    # An event naming a dataset training never received is dead-lettered, and nothing is queued.
    before = len((await services.training.ListRuns(pb.ListRunsRequest(limit=1000))).runs)
    await services.bus.publish(TrainingRequested(model_name="ghost", dataset="never-cut", reason="test"))
    await asyncio.sleep(2)
    assert len((await services.training.ListRuns(pb.ListRunsRequest(limit=1000))).runs) == before


def hold_fetch_until_stopped(monkeypatch, dataset: SyntheticDataset) -> threading.Event:
    """The worker's frame fetch for `dataset` waits until the run is told to stop, then runs:
    the stop lands deterministically mid-fetch. Returns an event set when the fetch is reached."""
    reached = threading.Event()
    shas = {line["sha256"] for line in dataset.manifest_lines}
    real_fetch_all = FrameCache.fetch_all

    def fetch_all(self, entries, **kwargs):
        should_stop = kwargs.get("should_stop")
        if should_stop is not None and entries[0].sha256 in shas:
            reached.set()
            deadline = time.monotonic() + 60
            while not should_stop():
                assert time.monotonic() < deadline, "the run was never told to stop"
                time.sleep(0.05)
        return real_fetch_all(self, entries, **kwargs)

    monkeypatch.setattr(FrameCache, "fetch_all", fetch_all)
    return reached


@pytest.mark.asyncio(loop_scope="session")
async def test_a_cancel_while_fetching_frames_cancels_the_run_and_publishes_nothing(services: Services, monkeypatch):
    name = f"line-{uuid.uuid4().hex[:6]}"
    dataset = await asyncio.to_thread(write_dataset, services.store, name, "v0001", per_class=PER_CLASS, size=32, seed=21)
    reached = hold_fetch_until_stopped(monkeypatch, dataset)
    await services.bus.publish(dataset.event)
    assert await asyncio.to_thread(reached.wait, 90), "the run never started fetching"
    (run,) = await services.runs(name)
    assert run.state == S.RUN_STATE_RUNNING

    cancelled = await services.training.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="wrong line"))
    assert cancelled.state == S.RUN_STATE_CANCELLED, cancelled.error
    assert "wrong line" in cancelled.error and not cancelled.epochs
    assert not services.store.exists("lineloop-models", f"{name}/{run.run_id}/model.onnx")
    assert await services.versions(name) == []  # no models.trained.v1, so nothing registered


def worker_only(settings: TrainingSettings) -> Service:
    """The training service without its consumers, so it runs only the runs a test queues
    (a fresh consumer group would replay every dataset the session has published)."""
    service = Service("training", settings)
    service.migrate("training", state.SCHEMA_VERSION, state.metadata)
    worker = RunWorker(service, settings)
    service.on_start(worker.start)
    service.on_stop(worker.stop)
    return service


@pytest.mark.asyncio(loop_scope="session")
async def test_a_shutdown_while_fetching_frames_queues_the_run_for_the_next_start(stack, tmp_path, monkeypatch):
    settings = TrainingSettings(
        database_url=f"sqlite:///{tmp_path / 'training.db'}", cache_dir=tmp_path / "cache", default_params=TINY,
        loader_workers=0, torch_threads=1, registry_grpc="", grpc_port=0, metrics_port=None, poll_interval_s=0.2,
        stack=stack_settings(stack))
    store = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    name = f"line-{uuid.uuid4().hex[:6]}"
    dataset = await asyncio.to_thread(write_dataset, store, name, "v0001", per_class=PER_CLASS, size=32, seed=22)
    reached = hold_fetch_until_stopped(monkeypatch, dataset)
    ev = dataset.event

    first = worker_only(settings)
    async with first.running():
        async with first.db.write() as s:
            state.record_dataset(s, dataset=name, version="v0001", bucket=ev.manifest.bucket, key=ev.manifest.key,
                                 sha256=ev.manifest.sha256, classes=list(ev.classes), line_id="")
            run_id, _ = state.enqueue(s, model_name=name, dataset=name, version="v0001", sha256=ev.manifest.sha256,
                                      params={}, reason="test", requested_by="test")
        assert await asyncio.to_thread(reached.wait, 60), "the run never started fetching"

    db = Database(settings.sql_url)
    with db.session() as s:
        row = state.get_run_row(s, run_id)
    db.dispose()
    assert row["state"] == state.QUEUED, row["error"]
    assert "requeued" in row["error"] and not row["cancel_requested"]

    monkeypatch.undo()  # the next start fetches normally
    second = worker_only(settings)
    async with second.running():
        async def fetch():
            with second.db.session() as s:
                return state.get_run_row(s, run_id)

        row = await until(fetch, lambda r: r["state"] in state.FINISHED, what="the requeued run to end")
    assert row["state"] == state.SUCCEEDED, row["error"]
    assert row["epochs"] and row["artifact_prefix"] == f"lineloop-models/{name}/{run_id}/"


@pytest.mark.asyncio(loop_scope="session")
async def test_training_requested_trains_the_named_dataset_version(services: Services):
    name = f"line-{uuid.uuid4().hex[:6]}"
    datasets = [await asyncio.to_thread(write_dataset, services.store, name, version, per_class=PER_CLASS, size=32, seed=seed)
                for version, seed in (("v0001", 31), ("v0002", 32))]
    for dataset in datasets:
        await services.bus.publish(dataset.event)
    runs = await until(lambda: services.runs(name), lambda r: {x.dataset_version for x in r} == {"v0001", "v0002"},
                       what="both versions received")
    for run in runs:  # the runs the versions queued only cost time here
        if run.state in (S.RUN_STATE_QUEUED, S.RUN_STATE_RUNNING):
            await services.training.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="test"))

    model = f"{name}-requested"
    await services.bus.publish(TrainingRequested(model_name=model, dataset=name, dataset_version="v0001",
                                                 params={"epochs": "1"}, reason="drift on camera 2", requested_by="monitor"))
    runs = await until(lambda: services.runs(model), lambda r: r and r[0].state in (S.RUN_STATE_SUCCEEDED, S.RUN_STATE_FAILED),
                       what="the requested run to end")
    assert len(runs) == 1 and runs[0].state == S.RUN_STATE_SUCCEEDED, runs[0].error
    run = runs[0]
    assert (run.dataset, run.dataset_version, run.dataset_sha256) == (name, "v0001", datasets[0].event.manifest.sha256)
    assert run.reason == "drift on camera 2" and run.params["epochs"] == "1" and len(run.epochs) == 1
