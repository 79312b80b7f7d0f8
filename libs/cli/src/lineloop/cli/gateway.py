"""`lineloop gateway simulate`: synthetic cameras on a packing line, publishing frames.

The core is `simulate()`: render -> encode -> (edge model) -> record the truth ->
publish, paced at N cameras x F frames/s. It is a plain coroutine so that other
tools (the edge agent, benchmarks, tests) drive it with their own sink or hook.
The true class of each frame goes to `lineloop-sim/truth/<frame_id>.json`, never
into the frame event, for the simulated QA operator to label from later.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import hashlib
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import typer
import urllib3
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lineloop.bus import Bus, KafkaSecurity
from lineloop.cli.common import err_console, grpc_target, print_json, rpc_errors
from lineloop.contracts.catalogue import bucket
from lineloop.contracts.topics import MAX_INLINE_IMAGE_BYTES
from lineloop.edge import load_fleets
from lineloop.edge.agent import AgentSetupError, running_agent
from lineloop.runtime import StackSettings
from lineloop.storage.objects import ObjectStore, content_key
from lineloop.v1 import ingest_pb2, ingest_pb2_grpc
from lineloop.v1.common_pb2 import ObjectRef, Prediction
from lineloop.v1.events_pb2 import FrameCaptured
from lineloop.vision import CLASSES, AppleRenderer, Drift, drift_strength, encode_jpeg
from lineloop.runtime.client import aio_channel as aio_grpc_channel
from lineloop.runtime.client import channel as grpc_channel

app = typer.Typer(no_args_is_help=True)

FRAMES_BUCKET = bucket("frames")
TRUTH_BUCKET = bucket("sim")
RENDER_AHEAD = 3  # frames rendered ahead of the one being sent

# Per-frame hook for a model running on the gateway: JPEG bytes -> its prediction (or None).
# It is called in a worker thread (an awaitable it returns is awaited on the loop).
EdgePredict = Callable[[bytes], Prediction | None | Awaitable[Prediction | None]]


class Via(enum.StrEnum):
    KAFKA = "kafka"
    GRPC = "grpc"


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    line: str
    cameras: int = 1
    fps: float = 5.0
    frames: int = 100  # in total, over all cameras
    drift: Drift = Drift.NONE
    drift_at: int = 0  # global frame index the drift starts at
    seed: int = 0
    size: int = 256
    jpeg_quality: int = 90
    shares: dict[str, float] | None = None
    upload: bool = False  # upload to S3 and send a reference, instead of inline bytes
    gateway_id: str = "gw-sim"
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        if self.cameras < 1 or self.frames < 0 or self.fps <= 0:
            raise ValueError("cameras >= 1, frames >= 0 and fps > 0 are required")


@dataclasses.dataclass(frozen=True)
class SimulatedFrame:
    frame: FrameCaptured
    label: str  # the truth, kept out of the event
    drift_strength: float


@dataclasses.dataclass
class SimulationReport:
    run_id: str
    sent: int = 0
    seconds: float = 0.0
    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    upload_result: dict | None = None  # gRPC: what ingest answered

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


class FrameSink:
    """Where frames go: `send` one, `close` once at the end."""

    async def send(self, frame: FrameCaptured) -> None:
        raise NotImplementedError

    async def close(self) -> dict | None:
        return None


class KafkaSink(FrameSink):
    """Publishes frames.captured.v1 (protobuf, CloudEvents headers), as a gateway would."""

    def __init__(self, bootstrap: str, gateway_id: str, security: KafkaSecurity | None = None) -> None:
        # The deployment's Kafka security (LINELOOP_KAFKA_*) unless given.
        security = security if security is not None else StackSettings().kafka_security()
        self.bus = Bus(bootstrap, source=f"lineloop/gateway/{gateway_id}", security=security)
        self._started = False

    async def send(self, frame: FrameCaptured) -> None:
        if not self._started:
            await self.bus.broker.start()
            self._started = True
        await self.bus.publish(frame)

    async def close(self) -> None:
        if self._started:
            await self.bus.broker.stop()


class GrpcSink(FrameSink):
    """One UploadFrames client stream to ingest; the answer comes at close."""

    def __init__(self, target: str) -> None:
        self.target = target
        # Made on first send: grpc.aio channels belong to the loop that runs them.
        self._queue: asyncio.Queue[FrameCaptured | None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call = None

    async def _requests(self) -> AsyncIterator[ingest_pb2.UploadFrameRequest]:
        while (frame := await self._queue.get()) is not None:
            yield ingest_pb2.UploadFrameRequest(frame=frame)

    async def send(self, frame: FrameCaptured) -> None:
        if self._call is None:
            self._queue = asyncio.Queue(maxsize=256)
            self._channel = aio_grpc_channel(self.target)
            self._call = asyncio.ensure_future(
                ingest_pb2_grpc.IngestServiceStub(self._channel).UploadFrames(self._requests())
            )
        await self._queue.put(frame)
        if self._call.done():
            self._call.result()  # ingest ended the stream early: raise its error

    async def close(self) -> dict | None:
        try:
            if self._call is None:
                return None
            await self._queue.put(None)
            response = await self._call
            return {"accepted": response.accepted, "rejected": response.rejected, "duplicates": response.duplicates}
        finally:
            await self._channel.close()


class PresignedUploads:
    """How a gateway sends images by reference without object-store keys: ingest signs a PUT
    for each image (RequestUploads), and the gateway PUTs the bytes to the store itself."""

    def __init__(self, ingest_target: str, ca_file: Path | None = None) -> None:
        self._channel = grpc_channel(ingest_target)
        self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
        # The store's certificate is verified against the plant's CA where one is configured.
        self._http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(ca_file) if ca_file else None,
                                         retries=urllib3.Retry(total=3, backoff_factor=0.2))

    def __call__(self, image: bytes, content_type: str) -> ObjectRef:
        wanted = ingest_pb2.ImageToUpload(sha256=hashlib.sha256(image).hexdigest(), size_bytes=len(image),
                                          content_type=content_type)
        (upload,) = self._stub.RequestUploads(ingest_pb2.RequestUploadsRequest(images=[wanted]), timeout=30).uploads
        if not upload.already_stored:
            answer = self._http.request("PUT", upload.url, body=image, headers={"Content-Type": content_type})
            if answer.status != 200:
                raise RuntimeError(f"presigned PUT of {upload.image_ref.key} answered {answer.status}: {answer.data[:200]!r}")
        return upload.image_ref

    def close(self) -> None:
        self._channel.close()


class SimulatedGateway:
    """Renders the frames of one simulation, deterministically from its config."""

    def __init__(self, config: SimulationConfig, objects: ObjectStore | None = None,
                 uploads: Callable[[bytes, str], ObjectRef] | None = None) -> None:
        self.config = config
        self.renderer = AppleRenderer(config.size, seed=config.seed, shares=config.shares)
        self.objects = objects  # the ground truth (and, without `uploads`, images sent by reference)
        self.uploads = uploads

    def frame_id(self, index: int) -> str:
        camera, n = index % self.config.cameras, index // self.config.cameras
        return f"{self.config.line}-{self.config.run_id}-c{camera}-{n:06d}"

    def render(self, index: int) -> tuple[bytes, str, float]:
        """(JPEG bytes, true class, drift strength) of global frame `index`."""
        c = self.config
        strength = drift_strength(c.drift, index - c.drift_at)
        rendered = self.renderer.render(index // c.cameras, camera_index=index % c.cameras, drift=c.drift, strength=strength)
        return encode_jpeg(rendered.image, c.jpeg_quality), rendered.label, strength

    def captured(self, index: int, image: bytes) -> FrameCaptured:
        c = self.config
        camera = index % c.cameras
        frame = FrameCaptured(
            frame_id=self.frame_id(index), line_id=c.line, camera_id=f"{c.line}-cam{camera}",
            gateway_id=c.gateway_id, content_type="image/jpeg",
            attributes={"simulator_run": c.run_id, "seed": str(c.seed)},
        )
        frame.captured_at.FromDatetime(datetime.now(UTC))
        if (c.upload or len(image) > MAX_INLINE_IMAGE_BYTES) and self.uploads is not None:
            frame.image_ref.CopyFrom(self.uploads(image, "image/jpeg"))
        elif c.upload or len(image) > MAX_INLINE_IMAGE_BYTES:
            if self.objects is None:
                raise RuntimeError("upload-then-reference needs an object store")
            sha = hashlib.sha256(image).hexdigest()
            stored = self.objects.put_content_addressed(FRAMES_BUCKET, image, "jpg", "image/jpeg", expected_sha256=sha)
            frame.image_ref.CopyFrom(ObjectRef(bucket=FRAMES_BUCKET, key=stored.key, sha256=sha, size_bytes=len(image)))
        else:
            frame.inline_image = image
        return frame

    def record_truth(self, frame: FrameCaptured, label: str, strength: float) -> None:
        if self.objects is None:
            return
        truth = {
            "frame_id": frame.frame_id, "line_id": frame.line_id, "camera_id": frame.camera_id, "label": label,
            "drift": self.config.drift.value if strength > 0 else Drift.NONE.value,
        }
        self.objects.put_bytes(TRUTH_BUCKET, f"truth/{frame.frame_id}.json", json.dumps(truth).encode(), "application/json")


async def simulate(
    config: SimulationConfig,
    sink: FrameSink,
    objects: ObjectStore | None = None,
    edge_predict: EdgePredict | None = None,
    on_frame: Callable[[SimulatedFrame], None] | None = None,
    ledger: Path | None = None,
    uploads: Callable[[bytes, str], ObjectRef] | None = None,
) -> SimulationReport:
    """Render, encode, (edge-predict), record the truth and publish `config.frames` frames.

    Frames are paced at cameras x fps in total; when rendering cannot keep up the
    simulator sends as fast as it can (the report says the rate reached).
    `ledger`: a JSON line per frame the sink accepted (frame id, sha256 of the image
    bytes), appended and flushed as it goes, for a checker (tests/chaos) to prove later
    that every frame sent was stored once.
    """
    gateway = SimulatedGateway(config, objects, uploads)
    report = SimulationReport(config.run_id)
    interval = 1.0 / (config.cameras * config.fps)

    def capture(index: int) -> tuple[FrameCaptured, bytes, str, float]:
        image, label, strength = gateway.render(index)
        return gateway.captured(index, image), image, label, strength

    # Rendering is the slow part: the next frames render in worker threads while this one is
    # sent (rendering is deterministic per index, so order and content do not change).
    ahead: collections.deque[asyncio.Future] = collections.deque()
    started = time.perf_counter()
    ledger_file = None if ledger is None else open(ledger, "a", buffering=1)  # line-buffered: a crash loses no line
    try:
        for index in range(config.frames):
            while len(ahead) < RENDER_AHEAD and index + len(ahead) < config.frames:
                ahead.append(asyncio.ensure_future(asyncio.to_thread(capture, index + len(ahead))))
            delay = started + index * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            frame, image, label, strength = await ahead.popleft()
            if edge_predict is not None:
                # Inference off the loop: the edge agent's rollout consumer and the sink keep running.
                prediction = await asyncio.to_thread(edge_predict, image)
                if inspect.isawaitable(prediction):
                    prediction = await prediction
                if prediction is not None:
                    frame.edge_prediction.CopyFrom(prediction)
            # The truth is read only once the frame has been ingested and offered for labelling.
            await asyncio.gather(asyncio.to_thread(gateway.record_truth, frame, label, strength), sink.send(frame))
            if ledger_file is not None:
                ledger_file.write(json.dumps({"frame_id": frame.frame_id, "sha256": hashlib.sha256(image).hexdigest(),
                                              "line_id": frame.line_id, "run_id": config.run_id}) + "\n")
            report.sent += 1
            report.labels[label] = report.labels.get(label, 0) + 1
            if on_frame is not None:
                on_frame(SimulatedFrame(frame, label, strength))
    finally:
        for pending in ahead:
            pending.cancel()
        if ledger_file is not None:
            ledger_file.close()
        report.upload_result = await sink.close()
        report.seconds = time.perf_counter() - started
    return report


def _parse_shares(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    shares = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"expected CLASS=SHARE, got {part!r}", param_hint="--shares") from None
    unknown = set(shares) - set(CLASSES)
    if unknown:
        raise typer.BadParameter(f"unknown classes {sorted(unknown)}; classes: {', '.join(CLASSES)}", param_hint="--shares")
    return shares


@app.command("simulate")
def simulate_command(
    line: str = typer.Option(..., "--line", help="Line id the frames belong to."),
    cameras: int = typer.Option(1, "--cameras", min=1, help="Cameras on the line."),
    fps: float = typer.Option(5.0, "--fps", min=0.01, help="Frames per second per camera."),
    frames: int = typer.Option(100, "--frames", min=0, help="Frames in total, over all cameras."),
    drift: Drift = typer.Option(Drift.NONE, "--drift", help="Drift mode to switch on."),
    drift_at: int = typer.Option(0, "--drift-at", min=0, help="Frame index (over all cameras) the drift starts at."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed renders the same frames."),
    via: Via = typer.Option(Via.KAFKA, "--via", help="Publish to Kafka, or upload to ingest over gRPC."),
    upload: bool = typer.Option(False, "--upload/--inline", help="Kafka: upload images and send references "
                                "(to a presigned URL ingest signs: the gateway needs no S3 keys)."),
    size: int = typer.Option(256, "--size", min=32, help="Frame width and height in pixels."),
    shares: str = typer.Option(None, "--shares", help="Class shares, e.g. ok=0.7,bruise=0.1,rot=0.1,scab=0.1."),
    gateway_id: str = typer.Option("gw-sim", "--gateway-id"),
    target: str = typer.Option(None, "--target", help="Ingest gRPC address (--via grpc); default LINELOOP_INGEST_GRPC."),
    fleet: str = typer.Option(None, "--fleet", help="Run this edge fleet's rolled-out model on the gateway."),
    trusted_keys: list[Path] = typer.Option(
        None, "--trusted-key", exists=True, dir_okay=False, readable=True,
        help="--fleet: a public key (PEM) whose signed builds the gateway installs; repeatable. "
             "Default: LINELOOP_EDGE_TRUSTED_KEYS, else the embedded compiler's development key.",
    ),
    ledger: Path = typer.Option(None, "--ledger", dir_okay=False,
                                help="Append a JSON line per frame sent (frame_id, sha256) to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Simulate a gateway: N cameras at F frames/s of synthetic apples, with optional drift."""
    config = SimulationConfig(
        line=line, cameras=cameras, fps=fps, frames=frames, drift=drift, drift_at=drift_at, seed=seed, size=size,
        shares=_parse_shares(shares), upload=upload, gateway_id=gateway_id,
    )
    if fleet and fleet not in (known := sorted(f.name for f in load_fleets())):
        raise typer.BadParameter(f"unknown fleet {fleet!r}; configured fleets: {', '.join(known) or 'none'}",
                                 param_hint="--fleet")
    stack = StackSettings()
    objects = stack.object_store()
    ingest = grpc_target("ingest", target)
    sink = GrpcSink(ingest) if via is Via.GRPC else KafkaSink(stack.kafka_bootstrap, gateway_id, stack.kafka_security())

    progress = Progress(
        TextColumn(f"[bold]{line}[/bold] via {via.value}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} frames/s"), TimeRemainingColumn(),
        console=err_console, disable=as_json,
    )
    with progress, rpc_errors("ingest", ingest):
        task = progress.add_task("frames", total=frames, rate=0.0)
        started = time.perf_counter()

        def advance(_: SimulatedFrame) -> None:
            done = progress.tasks[task].completed + 1
            progress.update(task, completed=done, rate=done / max(time.perf_counter() - started, 1e-9))

        uploads = PresignedUploads(ingest, stack.s3_ca_file) if upload else None

        async def run() -> SimulationReport:
            if not fleet:
                return await simulate(config, sink, objects, on_frame=advance, ledger=ledger, uploads=uploads)
            # The edge agent installs signed builds as they roll out, while frames keep flowing.
            async with running_agent(fleet=fleet, gateway_id=gateway_id, kafka_bootstrap=stack.kafka_bootstrap,
                                     kafka_security=stack.kafka_security(), objects=objects, state_dir=stack.state_dir,
                                     trusted_key_files=trusted_keys or None) as agent:
                return await simulate(config, sink, objects, edge_predict=agent.predict, on_frame=advance, ledger=ledger,
                                      uploads=uploads)

        try:
            report = asyncio.run(run())
        except AgentSetupError as err:
            err_console.print(f"[red]edge agent: {err}[/red]")
            raise typer.Exit(2) from None
        finally:
            if uploads is not None:
                uploads.close()
    summary = {
        "run_id": report.run_id, "line": line, "via": via.value, "sent": report.sent,
        "seconds": round(report.seconds, 3), "rate": round(report.rate, 2), "labels": report.labels,
        "drift": drift.value, "drift_at": drift_at, "first_frame_id": SimulatedGateway(config).frame_id(0),
    }
    if report.upload_result is not None:
        summary["ingest"] = report.upload_result
    if as_json:
        print_json(summary)
    else:
        err_console.print(
            f"sent {report.sent} frames of line {line} in {report.seconds:.1f} s ({report.rate:.1f}/s), "
            f"run {report.run_id}; labels {report.labels}"
            + (f"; ingest: {report.upload_result}" if report.upload_result else "")
        )

