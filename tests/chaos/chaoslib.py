"""The chaos harness: a running loop (embedded stack + the six services as processes),
steady gateway traffic recorded in a ledger, faults, and a checker that proves what was kept.

Used by `tests/chaos/run_chaos.py` (`make chaos`) and the short test in `make test`.
Nothing here is production code: it drives the loop only through its doors (processes,
signals, the gateway simulator, Kafka, S3) and reads the services' state read-only.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import psutil
from sqlalchemy import MetaData, create_engine, func, select

from lineloop.contracts.catalogue import bucket
from lineloop.stack.config import StackConfig, free_ports
from lineloop.stack.embedded import EmbeddedStack
from lineloop.stack.services import SERVICE_PORTS, ServiceFleet
from lineloop.storage.objects import ObjectStore

log = logging.getLogger("chaos")

SERVICES = tuple(SERVICE_PORTS)
SERVERS = ("s3", "kafka", "triton")
REPLICA = "-r2"  # the name of a service's second replica: "ingest-r2"
FRAMES_BUCKET = bucket("frames")
INGESTED_TOPIC = "frames.ingested.v1"
CHAOS_ENV = {
    "LINELOOP_LOG_FORMAT": "console",
}


# ---- the loop -------------------------------------------------------------------------


class Loop:
    """The embedded stack and the six services on free ports under `state_dir`."""

    def __init__(self, state_dir: Path, env: dict[str, str] | None = None,
                 database_urls: dict[str, str] | None = None) -> None:
        self.config = StackConfig.on_free_ports(state_dir)
        self.database_urls = database_urls or {}
        ports = free_ports(2 * len(SERVICES))
        self.env = {**CHAOS_ENV, **(env or {}), **self.config.env(),
                    "LINELOOP_STACK_TRITON_METRICS_PORT": str(self.config.triton_metrics_port)}
        for field, port in vars(self.config.weed).items():
            self.env[f"LINELOOP_STACK_WEED_{field.upper()}_PORT"] = str(port)
        for i, name in enumerate(SERVICES):
            self.env[f"LINELOOP_{name.upper()}_GRPC_PORT"] = str(ports[2 * i])
            self.env[f"LINELOOP_{name.upper()}_METRICS_PORT"] = str(ports[2 * i + 1])
        self.env["LINELOOP_MONITOR_HTTP_PORT"] = "0"  # the dashboard on any free port, never the catalogued 8106
        for name, url in self.database_urls.items():
            self.env[f"LINELOOP_{name.upper()}_DATABASE_URL"] = url
        # ServiceFleet hands services os.environ plus the stack's: this process is the harness.
        # Put back by down(): left behind, the loop's settings (its dead stack's addresses,
        # its policies) leaked into every later test in the session.
        self._environ_before = dict(os.environ)
        os.environ.update(self.env)
        # die_with_parent: the servers die with the harness even if it is killed outright.
        # With its watchdog, as `lineloop up` runs it: a server that dies or a store that refuses
        # writes is restarted by the stack itself, not by the harness.
        self.stack = EmbeddedStack(self.config, die_with_parent=True, ready_timeout=120.0, watchdog=True)
        self.fleet = ServiceFleet(self.config, ready_timeout=180.0, die_with_parent=True)

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    def up(self, names: list[str] | None = None) -> None:
        self.stack.up()
        results = self.fleet.up(names)
        failed = [f"{r.name}: {r.state}: {r.detail}" for r in results if r.state not in ("started", "running")]
        if failed:
            raise RuntimeError("services did not start:\n" + "\n".join(failed))

    def down(self) -> None:
        try:
            for service in SERVICES:
                self._replica(service + REPLICA).stop(timeout=15.0)
        finally:
            self._down_rest()

    def _down_rest(self) -> None:
        try:
            self.fleet.down()
            self.stack.down()
            if self.postgres is not None:
                self.postgres.stop()
        finally:
            os.environ.clear()
            os.environ.update(self._environ_before)

    # -- PostgreSQL (one database per service, as in production)

    postgres = None

    @classmethod
    def on_postgres(cls, state_dir: Path, env: dict[str, str] | None = None) -> Loop:
        from lineloop.stack.postgres import PostgresCluster, find_bin_dir
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found: run deploy/local/system-deps.sh")
        cluster = PostgresCluster(bin_dir)
        cluster.start()
        loop = cls(state_dir, env, {name: cluster.create_database() for name in SERVICES})
        loop.postgres = cluster
        return loop

    def postgres_process(self) -> psutil.Process | None:
        try:
            pid = int((self.postgres.data_dir / "postmaster.pid").read_text().split()[0])
            return psutil.Process(pid)
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess, AttributeError):
            return None

    def start_postgres(self) -> None:
        c = self.postgres
        (c.data_dir / "postmaster.pid").unlink(missing_ok=True)  # left by the kill; the server is gone
        options = f"-h 127.0.0.1 -p {c.port} -k {c.base_dir} -c fsync=off -c full_page_writes=off"
        c._run("pg_ctl", "-D", str(c.data_dir), "-l", str(c.log_file), "-o", options, "-w", "-t", "60", "start")

    def objects(self) -> ObjectStore:
        c = self.config
        return ObjectStore.from_url(c.s3_endpoint, c.s3_access_key, c.s3_secret_key, c.s3_region)

    # -- processes

    # -- a second replica of a service (PostgreSQL runs: replicas share one database)

    def _replica(self, name: str):
        from lineloop.stack.process import ManagedProcess
        return ManagedProcess(f"service-{name}", self.config.run_dir, self.config.logs_dir / f"{name}.log")

    def start_replica(self, service: str) -> None:
        from lineloop.stack import probes
        from lineloop.stack.process import wait_until
        from lineloop.stack.servers import scripts_dir
        name = service + REPLICA
        if self._replica(name).running() is not None:
            return
        grpc_port, metrics_port = free_ports(2)
        env = {**self.fleet.env(service), f"LINELOOP_{service.upper()}_GRPC_PORT": str(grpc_port),
               f"LINELOOP_{service.upper()}_METRICS_PORT": str(metrics_port)}
        handle = self._replica(name).start([str(scripts_dir() / f"lineloop-{service}")], env,
                                           cwd=self.state_dir, die_with_parent=True)
        wait_until(lambda: probes.grpc_serving(f"127.0.0.1:{grpc_port}"), 180, interval=0.2, proc=handle)

    def process(self, name: str) -> psutil.Process | None:
        if name.endswith(REPLICA):
            return self._replica(name).running()
        if name == "postgres":
            return self.postgres_process()
        if name in SERVICES:
            return self.fleet._process(name).running()
        spec = next(s for s in self.stack.specs() if s.name == name)
        return self.stack._process(spec).running()

    def pid(self, name: str) -> int:
        proc = self.process(name)
        if proc is None:
            raise RuntimeError(f"{name} is not running")
        return proc.pid

    def kill9(self, name: str) -> None:
        """SIGKILL to the process group (Triton's backend stubs, too): no shutdown code runs."""
        pid = self.pid(name)
        if name == "postgres":  # the postmaster only: its backends then exit on their own
            os.kill(pid, signal.SIGKILL)
            for child in psutil.Process(pid).children(recursive=True) if psutil.pid_exists(pid) else []:
                child.kill()
        else:
            os.killpg(pid, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(pid)], timeout=10) if psutil.pid_exists(pid) else None
        if name in SERVERS:
            next(s for s in self.stack.specs() if s.name == name).cleanup()

    def restart(self, name: str) -> None:
        if name.endswith(REPLICA):
            self.start_replica(name.removesuffix(REPLICA))
        elif name == "postgres":
            self.start_postgres()
        elif name in SERVICES:
            self.up([name])
        else:
            self.stack.up()

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name in SERVICES:
            proc = self.process(name)
            if proc is not None:
                try:
                    out[name] = proc.memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    pass
        return out


# ---- traffic ----------------------------------------------------------------------------


class _PatientObjects:
    """The simulator's object store, waiting out an outage as a gateway's spooler would."""

    def __init__(self, objects: ObjectStore, stop: threading.Event) -> None:
        self._objects = objects
        self._stop = stop

    def __getattr__(self, name):
        return getattr(self._objects, name)

    def put_bytes(self, *args, **kwargs):
        while True:
            try:
                return self._objects.put_bytes(*args, **kwargs)
            except Exception as exc:  # an outage: retried until it answers
                if self._stop.is_set():
                    raise
                log.info("gateway: truth upload failed (%s), retrying", type(exc).__name__)
                time.sleep(1.0)


class _PatientSink:
    """KafkaSink that retries a frame until the broker acknowledges it (at-least-once):
    a frame is in the ledger only once a publish returned."""

    def __init__(self, bootstrap: str, gateway_id: str, stop: threading.Event) -> None:
        from lineloop.cli.gateway import KafkaSink
        self._make = lambda: KafkaSink(bootstrap, gateway_id)
        self._sink = self._make()
        self._stop = stop
        self.retries = 0

    async def send(self, frame) -> None:
        while True:
            try:
                await asyncio.wait_for(self._sink.send(frame), 30.0)
                return
            except Exception as exc:
                if self._stop.is_set():
                    raise
                self.retries += 1
                log.info("gateway: publish of %s failed (%s: %s), retrying", frame.frame_id, type(exc).__name__, exc)
                try:
                    await asyncio.wait_for(self._sink.close(), 10.0)
                except Exception:
                    pass
                await asyncio.sleep(1.0)
                self._sink = self._make()

    async def close(self):
        try:
            await asyncio.wait_for(self._sink.close(), 10.0)
        except Exception:
            pass
        return None


class Traffic:
    """One gateway run in a background thread: `frames` frames at `rate`/s, into the ledger."""

    def __init__(self, loop: Loop, ledger: Path, *, line: str, frames: int, rate: float, seed: int,
                 cameras: int = 2, size: int = 96) -> None:
        from lineloop.cli.gateway import SimulationConfig
        self.config = SimulationConfig(line=line, cameras=cameras, fps=rate / cameras, frames=frames, seed=seed,
                                       size=size, gateway_id="gw-chaos")
        self.loop = loop
        self.ledger = ledger
        self.stop_event = threading.Event()
        self.report = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"traffic-{self.config.run_id}", daemon=True)
        self.started_at = 0.0

    @property
    def run_id(self) -> str:
        return self.config.run_id

    def start(self) -> Traffic:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        from lineloop.cli.gateway import simulate
        try:
            sink = _PatientSink(self.loop.config.kafka_bootstrap, "gw-chaos", self.stop_event)
            objects = _PatientObjects(self.loop.objects(), self.stop_event)
            self.report = asyncio.run(simulate(self.config, sink, objects, ledger=self.ledger))
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop_event.set()
            self._thread.join(60)
            raise TimeoutError(f"gateway run {self.run_id} did not finish in {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"gateway run {self.run_id} failed: {self.error!r}") from self.error


def read_ledger(ledger: Path) -> list[dict]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]


# ---- the checker ------------------------------------------------------------------------


@dataclasses.dataclass
class Verdict:
    """What the checker proved about a set of sent frames (one run id, or all)."""

    sent: int = 0
    lost: int = 0                 # sent, but not stored and in effect everywhere it must be
    duplicates_in_effect: int = 0  # counted twice anywhere
    orphans: int = 0              # objects in the frames bucket referenced by nothing
    missing_objects: int = 0      # references to objects not in the store
    sha_mismatches: int = 0
    topic_redeliveries: int = 0   # same event published again (at-least-once): harmless, reported
    drift_reports: int = 0
    alerts: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # kind -> raised, of the lines
    dlq_records: int = 0
    inconsistent: list[str] = dataclasses.field(default_factory=list)  # labels/datasets/models
    details: dict[str, list[str]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates_in_effect or self.orphans or self.missing_objects
                    or self.sha_mismatches or self.inconsistent)

    def note(self, what: str, item: str) -> None:
        if len(self.details[what]) < 10:
            self.details[what].append(item)

    def summary(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["details"] = dict(self.details)
        return d


class Checker:
    """Reads ingest's index, the object store, frames.ingested.v1, the monitor's and the labeling
    service's state, and the registry's versions; proves the ledger's frames are kept exactly once."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._engines: dict[str, object] = {}

    def engine(self, service: str):
        """An engine on `service`'s database; the checker only reads through it."""
        if service not in self._engines:
            url = self.loop.database_urls.get(service) or f"sqlite:///{self.loop.state_dir / f'{service}.db'}"
            self._engines[service] = create_engine(url)
        return self._engines[service]

    def table(self, service: str, name: str):
        md = MetaData()
        md.reflect(self.engine(service), only=[name])
        return md.tables[name]

    def _rows(self, service: str, table: str, *columns: str) -> list[tuple]:
        try:
            t = self.table(service, table)
        except Exception:  # not created yet: the service never got that far
            return []
        with self.engine(service).connect() as conn:
            return [tuple(r) for r in conn.execute(select(*(t.c[c] for c in columns)))]

    # -- what is in effect

    def in_effect(self, frame_ids: set[str]) -> set[str]:
        """The frames indexed by ingest AND recorded by the monitor AND queued by labeling."""
        ingest = {r[0] for r in self._rows("ingest", "ingest_frames", "frame_id")}
        monitor = {r[0] for r in self._rows("monitor", "monitor_frames", "frame_id")}
        labeling = {r[0] for r in self._rows("labeling", "labeling_frames", "frame_id")}
        return frame_ids & ingest & monitor & labeling

    def wait_caught_up(self, frame_ids: set[str], timeout: float) -> float | None:
        """Seconds until every frame is in effect, or None after `timeout`."""
        started = time.monotonic()
        while True:
            try:
                if self.in_effect(frame_ids) == frame_ids:
                    return time.monotonic() - started
            except Exception as exc:  # a database mid-restart
                log.info("checker: %s", exc)
            if time.monotonic() - started > timeout:
                return None
            time.sleep(2.0)

    # -- the proof

    def check(self, ledger: list[dict], *, verify_bytes: bool = True) -> Verdict:
        v = Verdict(sent=len(ledger))
        sent = {e["frame_id"]: e for e in ledger}
        self._check_frames(v, sent)
        self._check_objects(v, sent, verify_bytes)
        self._check_topic(v, sent)
        self._check_monitor(v, sent)
        self._check_downstream(v)
        return v

    def _check_frames(self, v: Verdict, sent: dict[str, dict]) -> None:
        ingest = {r[0]: r for r in self._rows("ingest", "ingest_frames", "frame_id", "sha256", "object_key", "duplicate_of")}
        monitor = {r[0] for r in self._rows("monitor", "monitor_frames", "frame_id")}
        labeling = {r[0] for r in self._rows("labeling", "labeling_frames", "frame_id")}
        lost = set()
        for frame_id, entry in sent.items():
            row = ingest.get(frame_id)
            if row is None:
                lost.add(frame_id)
                v.note("not in ingest's index", frame_id)
                continue
            if row[1] != entry["sha256"]:
                v.sha_mismatches += 1
                v.note("ingest sha256 differs from the ledger's", frame_id)
            if frame_id not in monitor:
                lost.add(frame_id)
                v.note("not in the monitor", frame_id)
            if frame_id not in labeling:
                lost.add(frame_id)
                v.note("not in the labeling queue", frame_id)
        v.lost = len(lost)
        # Content duplicates: of the sent frames that share one image, exactly one is the
        # original (unless an earlier frame outside this set had it first).
        by_sha = collections.defaultdict(list)
        for frame_id in sent:
            if frame_id in ingest:
                by_sha[ingest[frame_id][1]].append(ingest[frame_id])
        for sha, rows in by_sha.items():
            originals = [r for r in rows if not r[3]]
            if len(originals) > 1:
                v.duplicates_in_effect += len(originals) - 1
                v.note("one image indexed as new twice", sha)

    def _check_objects(self, v: Verdict, sent: dict[str, dict], verify_bytes: bool) -> None:
        objects = self.loop.objects()
        stored = {o.object_name for o in objects.client.list_objects(FRAMES_BUCKET, recursive=True)}
        report = None
        try:  # ingest's own reconciliation: the same proof a deployment runs
            from lineloop.ingest.reconcile import check as reconcile
            from lineloop.storage.sql import Database
            db = Database(str(self.engine("ingest").url.render_as_string(hide_password=False)))
            try:
                # Grace 0: traffic has stopped and caught up, every unreferenced object is an orphan.
                report = reconcile(db, objects, FRAMES_BUCKET, grace_s=0, delete=False)
            finally:
                db.dispose()
        except (ImportError, AttributeError) as exc:  # an ingest without it: checked directly below
            v.note("reconcile unavailable, checked directly", repr(exc))
        if report is not None:
            for o in [*report.orphans, *report.in_grace]:
                v.orphans += 1
                v.note("object referenced by no frame (reconcile)", o.key)
            for m in report.missing:
                v.missing_objects += 1
                v.note("frame whose object is missing (reconcile)", f"{m.frame_ids} -> {m.key}")
        else:
            referenced = {r[1]: r[0] for r in self._rows("ingest", "ingest_frames", "frame_id", "object_key")}
            for key in stored - set(referenced):
                v.orphans += 1
                v.note("object referenced by no frame", key)
            for key, frame_id in referenced.items():
                if key not in stored:
                    v.missing_objects += 1
                    v.note("frame whose object is missing", f"{frame_id} -> {key}")
        if verify_bytes:
            rows = {r[0]: r for r in self._rows("ingest", "ingest_frames", "frame_id", "object_key")}
            for frame_id, entry in sent.items():
                row = rows.get(frame_id)
                if row is None or row[1] not in stored:
                    continue
                data = objects.get_bytes(FRAMES_BUCKET, row[1])
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    v.sha_mismatches += 1
                    v.note("stored bytes differ from the bytes sent", frame_id)

    def _check_topic(self, v: Verdict, sent: dict[str, dict]) -> None:
        events = asyncio.run(read_topic(self.loop.config.kafka_bootstrap, INGESTED_TOPIC))
        contents = collections.defaultdict(set)
        count = collections.Counter()
        for frame_id, digest in events:
            if frame_id in sent:
                contents[frame_id].add(digest)
                count[frame_id] += 1
        for frame_id in sent:
            if count[frame_id] == 0:
                # Indexed but never announced: downstream never hears of it.
                v.note("no frames.ingested.v1 event", frame_id)
            elif len(contents[frame_id]) > 1:
                # Two different FrameIngested for one frame: two ingests both took effect.
                v.duplicates_in_effect += 1
                v.note("two different frames.ingested.v1 events", frame_id)
            v.topic_redeliveries += max(0, count[frame_id] - 1)
        missing_events = sum(1 for f in sent if count[f] == 0)
        v.lost = max(v.lost, missing_events)
        dlq = asyncio.run(count_dlq(self.loop.config.kafka_bootstrap))
        v.dlq_records = sum(dlq.values())

    def _check_monitor(self, v: Verdict, sent: dict[str, dict]) -> None:
        # Counted once: per line, the frames counted equal the frames recorded, and no two
        # frames share an arrival number (the windows are built from it).
        lines = {e["line_id"] for e in sent.values()}
        try:
            frames_t = self.table("monitor", "monitor_frames")
            lines_t = self.table("monitor", "monitor_lines")
        except Exception:
            v.inconsistent.append("monitor has no frames/lines tables")
            return
        with self.engine("monitor").connect() as conn:
            for line in lines:
                rows = conn.execute(select(func.count()).where(frames_t.c.line_id == line)).scalar_one()
                if "seq" in frames_t.c:
                    seqs = conn.execute(select(func.count(func.distinct(frames_t.c.seq))).where(frames_t.c.line_id == line)).scalar_one()
                    if seqs != rows:
                        v.duplicates_in_effect += rows - seqs
                        v.note("monitor arrival numbers used twice", line)
                if "frames_seen" in lines_t.c:
                    seen = conn.execute(select(lines_t.c.frames_seen).where(lines_t.c.line_id == line)).scalar_one_or_none() or 0
                    if seen != rows:
                        v.duplicates_in_effect += max(0, seen - rows)
                        v.note("monitor frames_seen differs from frames recorded", f"{line}: {seen} vs {rows}")
            try:
                drift_t = self.table("monitor", "monitor_drift")
            except Exception:
                drift_t = None  # no drift judged yet
            if drift_t is not None:
                v.drift_reports = conn.execute(select(func.count()).where(drift_t.c.line_id.in_(lines))).scalar_one()
            try:
                alerts_t = self.table("monitor", "monitor_alerts")
            except Exception:
                alerts_t = None  # no alert raised yet
            if alerts_t is not None:
                from lineloop.v1.events_pb2 import AlertKind
                for kind, n in conn.execute(select(alerts_t.c.kind, func.count()).where(
                        alerts_t.c.line_id.in_(lines)).group_by(alerts_t.c.kind)):
                    v.alerts[AlertKind.Name(kind).removeprefix("ALERT_KIND_").lower()] = n

    def _check_downstream(self, v: Verdict) -> None:
        """Labels, dataset versions and model versions: nothing half-written."""
        from lineloop.v1.events_pb2 import DatasetVersioned
        from lineloop.v1.common_pb2 import ObjectRef
        objects = self.loop.objects()
        queued = {r[0] for r in self._rows("labeling", "labeling_frames", "frame_id")}
        for label_id, frame_id in self._rows("labeling", "labeling_labels", "label_id", "frame_id"):
            if frame_id not in queued:
                v.inconsistent.append(f"label {label_id} for frame {frame_id} the labeling service never saw")
        for dataset, version, sha, event in self._rows("labeling", "labeling_dataset_versions",
                                                       "dataset", "version", "manifest_sha256", "event"):
            manifest = DatasetVersioned.FromString(event).manifest
            try:
                data = objects.get_bytes(manifest.bucket, manifest.key)
            except Exception as exc:
                v.inconsistent.append(f"dataset {dataset} {version}: manifest {manifest.key} unreadable: {exc}")
                continue
            if hashlib.sha256(data).hexdigest() != sha:
                v.inconsistent.append(f"dataset {dataset} {version}: manifest sha256 differs from the recorded one")
        for model, version, onnx in self._rows("registry", "registry_versions", "model_name", "version", "onnx"):
            ref = ObjectRef.FromString(onnx)
            try:
                objects.stat(ref.bucket, ref.key)
            except Exception as exc:
                v.inconsistent.append(f"model {model} v{version}: artifact {ref.bucket}/{ref.key} missing: {exc}")


async def read_topic(bootstrap: str, topic: str) -> list[tuple[str, str]]:
    """(frame_id, sha256 of the event bytes) of every record now in `topic`."""
    from lineloop.v1.events_pb2 import FrameIngested
    # The event without ingested_at: a replay of the same outbox row is byte-identical; a
    # second, different ingest differs in its content or time.
    return [(FrameIngested.FromString(value).frame_id, hashlib.sha256(value).hexdigest())
            for _, value in await read_records(bootstrap, [topic])]


async def count_dlq(bootstrap: str) -> dict[str, int]:
    """Records in every `<topic>.dlq`."""
    from aiokafka import AIOKafkaConsumer
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        topics = [t for t in await consumer.topics() if t.endswith(".dlq")]
    finally:
        await consumer.stop()
    counts = dict.fromkeys(topics, 0)
    for topic, _ in await read_records(bootstrap, topics):
        counts[topic] += 1
    return counts


async def read_records(bootstrap: str, topics: list[str]) -> list[tuple[str, bytes]]:
    """(topic, value) of every record now in `topics`, read from the beginning.

    Tansu reports a partition's end as the first offset of its last batch + 1, so reading up to
    the reported end missed the tail (the final check once counted 11 frames lost that every row
    had seen, and a DLQ count could come out short): this reads past it, until a fetch finds nothing
    more.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    out = []
    try:
        partitions = [TopicPartition(topic, p) for topic in topics
                      for p in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))]
        if not partitions:
            return out
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while True:
            batch = await consumer.getmany(timeout_ms=2000, max_records=5000)
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in partitions]):
                break
            for tp, records in batch.items():
                out.extend((tp.topic, record.value) for record in records)
    finally:
        await consumer.stop()
    return out


async def _partitions(consumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


# ---- a slow dependency ------------------------------------------------------------------


class DelayRelay:
    """A TCP relay on 127.0.0.1 that holds every chunk a client sends for `delay_s` before
    passing it on: a slow object store or Triton, for the back-pressure run."""

    def __init__(self, target_host: str, target_port: int, delay_s: float) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.port = free_ports(1)[0]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="delay-relay", daemon=True)

    def __enter__(self) -> DelayRelay:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._pipe, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _pipe(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return

        async def copy(r, w, delay: float) -> None:
            try:
                while data := await r.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(copy(client_r, server_w, self.delay_s), copy(server_r, client_w, 0.0))
