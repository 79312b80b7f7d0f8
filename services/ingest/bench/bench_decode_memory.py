"""Peak RSS of an ingest process taking a burst of frames near the pixel cap, with and without
the decode pixel budget.

Starts an embedded stack on free ports and a small ONNX model in Triton (so frames are
scored from their full-resolution image, as in production), uploads N camera-like JPEGs
of about 39 MP to the object store and publishes their frames.captured.v1 events at once.
Each variant runs as its own ingest process on its own stack; its peak RSS over the burst
is its VmHWM after `clear_refs` reset it at the start.

    .venv/bin/python services/ingest/bench/bench_decode_memory.py [--frames 8] [--baseline COMMIT]

`--baseline COMMIT` also runs ingest with `pipeline.py`, `settings.py` and `lineloop.vision`
as they were at COMMIT (the rest of the tree as it is now), for a before/after table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_ingest import IngestedReader, build_model, headers_for  # noqa: E402

from lineloop.contracts.catalogue import bucket  # noqa: E402
from lineloop.contracts.topics import event_type  # noqa: E402
from lineloop.ingest.testing import ensure_topics  # noqa: E402
from lineloop.serving import ServingOptions, TritonControl, open_repository  # noqa: E402
from lineloop.stack.config import StackConfig, free_ports  # noqa: E402
from lineloop.stack.embedded import EmbeddedStack  # noqa: E402
from lineloop.stack.probes import grpc_serving  # noqa: E402
from lineloop.storage.objects import ObjectStore  # noqa: E402
from lineloop.v1.common_pb2 import ObjectRef  # noqa: E402
from lineloop.v1.events_pb2 import FrameCaptured, LineDeployment, ModelPromoted  # noqa: E402
from lineloop.vision import CLASSES, AppleRenderer, encode_jpeg  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
WIDTH, HEIGHT = 7200, 5400  # 38.9 MP, under the 40 MP cap


def large_jpeg(seed: int) -> bytes:
    base = AppleRenderer(256, seed=seed).render(seed).image.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    noise = Image.merge("RGB", [Image.effect_noise((WIDTH, HEIGHT), 12).point(lambda v: v - 128)] * 3)
    return encode_jpeg(Image.blend(base, noise, 0.05), 85)


def unique(jpeg: bytes) -> bytes:
    comment = f"bench {uuid.uuid4().hex}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def baseline_overlay(commit: str, into: Path) -> Path:
    """lineloop.ingest as now but pipeline.py/settings.py from `commit`, and lineloop.vision from `commit`."""
    package = into / "lineloop"
    shutil.copytree(ROOT / "services/ingest/src/lineloop/ingest", package / "ingest")
    for name in ("pipeline.py", "settings.py"):
        old = subprocess.run(["git", "show", f"{commit}:services/ingest/src/lineloop/ingest/{name}"],
                             cwd=ROOT, check=True, capture_output=True).stdout
        (package / "ingest" / name).write_bytes(old)
    vision = package / "vision"
    vision.mkdir(parents=True)
    listing = subprocess.run(["git", "ls-tree", "--name-only", f"{commit}:libs/vision/src/lineloop/vision"],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    for name in listing:
        (vision / name).write_bytes(subprocess.run(
            ["git", "show", f"{commit}:libs/vision/src/lineloop/vision/{name}"], cwd=ROOT, check=True,
            capture_output=True).stdout)
    return into


def status_kib(pid: int, field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


async def run_variant(stack, state: Path, name: str, pythonpath: str | None, line: str, model: str,
                      frames: list[bytes], store: ObjectStore) -> dict:
    grpc_port, metrics_port = free_ports(2)
    group = f"bench-{name}"
    env = {**os.environ, **stack.env(), "LINELOOP_LOG_LEVEL": "WARNING",
           "LINELOOP_INGEST_GRPC_PORT": str(grpc_port), "LINELOOP_INGEST_METRICS_PORT": str(metrics_port),
           "LINELOOP_INGEST_CONSUMER_GROUP": group,
           "LINELOOP_INGEST_DATABASE_URL": f"sqlite:///{state / f'ingest-{name}.db'}",
           "LINELOOP_INGEST_KAFKA_SESSION_TIMEOUT_MS": "6000", "LINELOOP_INGEST_KAFKA_HEARTBEAT_INTERVAL_MS": "1000"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    log = open(state / f"ingest-{name}.log", "wb")
    ingest = subprocess.Popen([sys.executable, "-m", "lineloop.ingest.main"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    reader = IngestedReader(stack)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=2)
    try:
        deadline = time.monotonic() + 90
        while not grpc_serving(f"127.0.0.1:{grpc_port}"):
            if ingest.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ingest {name} did not start; see {state / f'ingest-{name}.log'}")
            await asyncio.sleep(0.2)
        started_rss = status_kib(ingest.pid, "VmRSS")
        await reader.start()
        await producer.start()

        def captured(image: ObjectRef) -> FrameCaptured:
            frame = FrameCaptured(frame_id=f"{name}-{uuid.uuid4().hex[:12]}", line_id=line, camera_id="cam-1",
                                  gateway_id="gw-bench", content_type="image/jpeg", image_ref=image)
            frame.captured_at.FromDatetime(datetime.now(UTC))
            return frame

        async def send(frame: FrameCaptured):
            return await producer.send(event_type(frame).topic, frame.SerializeToString(),
                                       key=frame.camera_id.encode(), headers=headers_for(frame))

        def upload(data: bytes) -> ObjectRef:
            stored = store.put_bytes(bucket("frames"), f"uploads/bench-{uuid.uuid4().hex}.jpg", data, "image/jpeg")
            return ObjectRef(bucket=stored.bucket, key=stored.key, sha256=stored.sha256)

        # Warm up with one small frame until it comes back scored (group joined, model known).
        small = encode_jpeg(AppleRenderer(256, seed=9).render(0).image)
        while True:
            frame = captured(upload(unique(small)))
            await (await send(frame))
            await reader.wait([frame.frame_id], 120)
            if reader.arrived[frame.frame_id][1].prediction.model_name == model:
                break
            await asyncio.sleep(0.3)

        burst = [captured(upload(unique(data))) for data in frames]
        idle_rss = status_kib(ingest.pid, "VmRSS")
        Path(f"/proc/{ingest.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        started = time.perf_counter()
        await asyncio.gather(*[await send(f) for f in burst])
        await reader.wait([f.frame_id for f in burst], 900)
        took = time.perf_counter() - started
        peak = status_kib(ingest.pid, "VmHWM")
        scored = sum(1 for f in burst if reader.arrived[f.frame_id][1].prediction.model_name == model)
        return {"started": started_rss / 1024, "idle": idle_rss / 1024, "peak": peak / 1024, "took": took, "scored": scored}
    finally:
        await producer.stop()
        if getattr(reader, "task", None) is not None:
            await reader.stop()
        if ingest.poll() is None:
            ingest.send_signal(signal.SIGTERM)
            try:
                ingest.wait(30)
            except subprocess.TimeoutExpired:
                ingest.kill()
        log.close()


async def on_fresh_stack(state: Path, name: str, pythonpath: str | None, frames: list[bytes]) -> dict:
    """One variant on its own stack: nothing another variant published can reach it."""
    stack = EmbeddedStack(StackConfig.on_free_ports(state / name), die_with_parent=True)
    stack.up()
    try:
        model, line = "bench-apples", "bench-decode"
        path = state / "model.onnx"
        build_model(path)
        open_repository(stack.triton_repository, stack.s3_access_key, stack.s3_secret_key).write_model_version(
            model, 1, path, labels=CLASSES, options=ServingOptions(max_batch_size=32, max_queue_delay_us=500))
        with TritonControl(stack.triton_grpc) as control:
            control.load(model)
            control.wait_ready(model, 1)
        await ensure_topics(stack, [event_type(ModelPromoted).topic, event_type(FrameCaptured).topic])
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        promoted = ModelPromoted(model_name=model, version="1", classes=CLASSES, deployments=[
            LineDeployment(line_id=line, triton_model=model, production_version="1")])
        await producer.send_and_wait(event_type(promoted).topic, promoted.SerializeToString(),
                                     key=model.encode(), headers=headers_for(promoted))
        await producer.stop()
        store = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
        return await run_variant(stack, state, name, pythonpath, line, model, frames, store)
    finally:
        stack.down()


async def main_async(args) -> None:
    state = Path(tempfile.mkdtemp(prefix="lineloop-bench-decode-"))
    base = [large_jpeg(seed) for seed in range(min(3, args.frames))]
    frames = [base[i % len(base)] for i in range(args.frames)]
    print(f"{args.frames} frames of {WIDTH}x{HEIGHT} ({WIDTH * HEIGHT / 1e6:.1f} MP), "
          f"JPEG {sum(len(b) for b in base) / len(base) / 2**20:.1f} MiB each; state in {state}", flush=True)
    variants = []
    if args.baseline:
        variants.append((f"before ({args.baseline[:10]})", str(baseline_overlay(args.baseline, state / "baseline"))))
    variants.append(("now", None))
    results = {}
    for name, pythonpath in variants:
        print(f"running ingest: {name} ...", flush=True)
        tag = re.sub(r"[^a-z0-9]", "", name.split()[0])
        results[name] = await on_fresh_stack(state, tag, pythonpath, frames)
    print()
    print(f"{'ingest':<24}{'started':>10}{'idle RSS':>10}{'peak RSS':>10}{'growth':>10}{'scored':>8}{'took':>8}")
    for name, r in results.items():
        print(f"{name:<24}{r['started']:>6.0f} MiB{r['idle']:>6.0f} MiB{r['peak']:>6.0f} MiB{r['peak'] - r['idle']:>6.0f} MiB"
              f"{r['scored']:>5d}/{args.frames}{r['took']:>7.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--baseline", default="", help="also run ingest's decode path as of this commit")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
