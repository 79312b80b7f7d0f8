"""Ingest throughput and latency against raw broker and S3 rates, measured in one run.

Starts an embedded stack on free ports and an ingest process on it, loads a small
ONNX model into Triton (built with `onnx`, no torch), then measures:
  1. raw produce rate of the broker (aiokafka, acks=all, the frame events' size),
  2. raw PUT rate of the S3 store (minio client, 64 KB objects, as many threads as ingest uses),
  3. ingest end-to-end rate for 64 KB JPEG frames, captured -> stored -> scored -> ingested event,
  4. captured -> ingested latency p50/p99 at a fixed 200 frames/s,
and prints the ratio ingest / min(raw rates) and where ingest's time goes (its /metrics).

    .venv/bin/python services/ingest/bench/bench_ingest.py [--frames 1000] [--latency-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import onnx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from onnx import TensorProto, helper, numpy_helper

from lineloop.bus import Bus
from lineloop.bus.cloudevents import make_headers
from lineloop.contracts.catalogue import bucket
from lineloop.contracts.topics import event_type
from lineloop.serving import ServingOptions, TritonControl, open_repository
from lineloop.stack.config import StackConfig, free_ports
from lineloop.stack.embedded import EmbeddedStack
from lineloop.stack.probes import grpc_serving
from lineloop.v1.events_pb2 import FrameCaptured, FrameIngested, LineDeployment, ModelPromoted
from lineloop.vision import CLASSES, AppleRenderer, encode_jpeg

MODEL_SIZE = 64
FRAME_SIZE, JPEG_QUALITY = 512, 94  # about 64 KB per frame
PUT_THREADS = 16


def build_model(path: Path) -> None:
    """images [N,3,64,64] -> avg-pool 8x8 -> 192 -> tanh(16) = embedding -> softmax(4) = probabilities."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (192, 16)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(16, np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (16, len(CLASSES))).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(len(CLASSES), np.float32), "b2")
    nodes = [
        helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["hidden"]),
        helper.make_node("Tanh", ["hidden"], ["embedding"]),
        helper.make_node("Gemm", ["embedding", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "apples",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, MODEL_SIZE, MODEL_SIZE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", len(CLASSES)]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 16])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


class Frames:
    """64 KB JPEGs: a few rendered apples, each copy made unique by a JPEG comment (new sha256)."""

    def __init__(self, count: int = 8) -> None:
        renderer = AppleRenderer(FRAME_SIZE, seed=42)
        self.bases = [encode_jpeg(renderer.render(i).image, JPEG_QUALITY) for i in range(count)]
        self.n = 0

    def next(self) -> bytes:
        self.n += 1
        base = self.bases[self.n % len(self.bases)]
        comment = f"bench {uuid.uuid4().hex}".encode()
        return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]

    @property
    def mean_size(self) -> float:
        return float(np.mean([len(b) for b in self.bases]))


def headers_for(msg) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in make_headers(event_type(msg), source="bench/gateway").items()]


def captured(line: str, image: bytes, index: int) -> FrameCaptured:
    frame = FrameCaptured(frame_id=f"{line}-{index:07d}", line_id=line, camera_id=f"{line}-cam{index % 6}",
                          gateway_id="gw-bench", content_type="image/jpeg", inline_image=image)
    frame.captured_at.FromDatetime(datetime.now(UTC))
    return frame


async def raw_produce_rate(stack: EmbeddedStack, frames: Frames, count: int) -> float:
    topic = f"bench.raw.{uuid.uuid4().hex[:6]}"
    await Bus(stack.kafka_bootstrap, source="bench", partitions=3).ensure_topics([topic])
    payloads = [captured("raw", frames.next(), i).SerializeToString() for i in range(count)]
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=5,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        sends = [await producer.send(topic, p, key=str(i % 6).encode()) for i, p in enumerate(payloads)]
        await asyncio.gather(*sends)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()


def raw_put_rate(stack: EmbeddedStack, frames: Frames, count: int) -> float:
    client = stack.s3_client()
    blobs = [frames.next() for _ in range(count)]

    def put(data: bytes) -> None:
        key = f"bench/{hashlib.sha256(data).hexdigest()}.jpg"
        client.put_object(bucket("frames"), key, io.BytesIO(data), len(data), content_type="image/jpeg")

    with ThreadPoolExecutor(PUT_THREADS) as pool:
        started = time.perf_counter()
        list(pool.map(put, blobs))
        return count / (time.perf_counter() - started)


class IngestedReader:
    """Consumes frames.ingested.v1 from its current end; records when each frame id arrived."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self.stack = stack
        self.arrived: dict[str, tuple[float, FrameIngested]] = {}

    async def start(self) -> None:
        topic = event_type(FrameIngested).topic
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka_bootstrap, enable_auto_commit=False,
                                         fetch_max_wait_ms=5)
        await self.consumer.start()
        await self.consumer.topics()
        partitions = [TopicPartition(topic, p) for p in self.consumer.partitions_for_topic(topic) or ()]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for record in self.consumer:
            msg = FrameIngested.FromString(record.value)
            self.arrived[msg.frame_id] = (time.time(), msg)

    async def wait(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(i not in self.arrived for i in ids):
            if time.monotonic() > deadline:
                missing = sum(1 for i in ids if i not in self.arrived)
                raise TimeoutError(f"{missing} of {len(ids)} frames not ingested after {timeout:.0f} s")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.task.cancel()
        await self.consumer.stop()


class CpuMeter:
    """CPU seconds used by ingest and each stack server (with children: Triton's python stub)."""

    def __init__(self, stack: EmbeddedStack, ingest_pid: int) -> None:
        self.procs = {"ingest": psutil.Process(ingest_pid)}
        for status in stack.status():
            if status.pid:
                self.procs[status.name] = psutil.Process(status.pid)
        self.own = psutil.Process()  # the servers are its children: count it alone

    def sample(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    times = p.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
            out[name] = total
        own = self.own.cpu_times()
        out["bench (producer, reader)"] = own.user + own.system
        return out


def scrape(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = values.get(name, 0.0) + float(value)
    return values


def stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, tuple[float, float]]:
    """stage -> (mean ms, count) between two scrapes of lineloop_ingest_stage_duration."""
    out = {}
    for name, value in after.items():
        if name.startswith("lineloop_ingest_stage_duration_seconds_sum{"):
            stage = name.split('stage="', 1)[1].split('"', 1)[0]
            count_name = name.replace("_sum{", "_count{")
            count = after.get(count_name, 0) - before.get(count_name, 0)
            total = value - before.get(name, 0)
            if count:
                out[stage] = (1000 * total / count, count)
    return out


def histogram_mean(before, after, prefix: str) -> float:
    total = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(prefix + "_sum"))
    count = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(prefix + "_count"))
    return total / count if count else float("nan")


async def main_async(args) -> None:
    state = Path(tempfile.mkdtemp(prefix="lineloop-bench-ingest-"))
    stack = EmbeddedStack(StackConfig.on_free_ports(state), die_with_parent=True)
    print(f"starting the embedded stack in {state} ...", flush=True)
    stack.up()
    ingest = None
    try:
        frames = Frames()
        print(f"frames: {FRAME_SIZE}x{FRAME_SIZE} JPEG, mean {frames.mean_size / 1024:.1f} KB", flush=True)

        produce = await raw_produce_rate(stack, frames, args.frames)
        put = await asyncio.to_thread(raw_put_rate, stack, frames, args.frames // 2)

        # The model, in Triton's repository, loaded.
        model = "bench-apples"
        path = state / "model.onnx"
        build_model(path)
        open_repository(stack.triton_repository, stack.s3_access_key, stack.s3_secret_key).write_model_version(
            model, 1, path, labels=CLASSES, options=ServingOptions(max_batch_size=32, max_queue_delay_us=500))
        with TritonControl(stack.triton_grpc) as control:
            control.load(model)
            control.wait_ready(model, 1)

        grpc_port, metrics_port = free_ports(2)
        env = {**os.environ, **stack.env(), "LINELOOP_LOG_LEVEL": "WARNING",
               "LINELOOP_INGEST_GRPC_PORT": str(grpc_port), "LINELOOP_INGEST_METRICS_PORT": str(metrics_port),
               "LINELOOP_INGEST_KAFKA_SESSION_TIMEOUT_MS": "6000", "LINELOOP_INGEST_KAFKA_HEARTBEAT_INTERVAL_MS": "1000"}
        log = open(state / "ingest.log", "wb")
        profile = ["-m", "cProfile", "-o", str(state / "ingest.prof")] if args.profile else []
        ingest = subprocess.Popen([sys.executable, *profile, "-m", "lineloop.ingest.main"], env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not grpc_serving(f"127.0.0.1:{grpc_port}"):
            if ingest.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ingest did not start; see {state / 'ingest.log'}")
            await asyncio.sleep(0.2)

        line = "bench-line"
        reader = IngestedReader(stack)
        await reader.start()
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=2,
                                    max_request_size=4 * 1024 * 1024)
        await producer.start()

        async def send(frame: FrameCaptured):
            return await producer.send(event_type(frame).topic, frame.SerializeToString(),
                                       key=frame.camera_id.encode(), headers=headers_for(frame))

        promoted = ModelPromoted(model_name=model, version="1", classes=CLASSES, deployments=[
            LineDeployment(line_id=line, triton_model=model, production_version="1")])
        await producer.send_and_wait(event_type(promoted).topic, promoted.SerializeToString(),
                                     key=model.encode(), headers=headers_for(promoted))
        # Warm up until frames come back scored (group joined, deployment applied, model metadata cached).
        index = 0
        while True:
            frame = captured(line, frames.next(), index)
            index += 1
            await (await send(frame))
            await reader.wait([frame.frame_id], 60)
            if reader.arrived[frame.frame_id][1].prediction.model_name == model:
                break
            await asyncio.sleep(0.2)

        # 3. Throughput: everything at once, then wait for all ingested events.
        batch = [captured(line, frames.next(), index + i) for i in range(args.frames)]
        index += args.frames
        cpu = CpuMeter(stack, ingest.pid)
        before, cpu_before = scrape(metrics_port), cpu.sample()
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        await asyncio.gather(*[await send(f) for f in batch])
        await reader.wait([f.frame_id for f in batch], 600)
        ingest_rate = args.frames / (time.perf_counter() - started)
        after, cpu_after = scrape(metrics_port), cpu.sample()
        scored = sum(1 for f in batch if reader.arrived[f.frame_id][1].prediction.model_name == model)

        # 4. Latency at the fixed 200 frames/s, and at half the throughput measured above
        # (below saturation, so it shows the pipeline's own latency rather than a queue).
        async def latency_at(rate: float, start_index: int) -> tuple[np.ndarray, dict, dict]:
            count = max(20, int(rate * args.latency_seconds))
            lat_frames = [captured(line, frames.next(), start_index + i) for i in range(count)]
            lat_before = scrape(metrics_port)
            sends, t0 = [], time.perf_counter()
            for i, frame in enumerate(lat_frames):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                frame.captured_at.FromDatetime(datetime.now(UTC))
                sends.append(await send(frame))
            await asyncio.gather(*sends)
            await reader.wait([f.frame_id for f in lat_frames], 600)
            latencies = np.array([
                1000 * (reader.arrived[f.frame_id][0] - f.captured_at.ToDatetime(tzinfo=UTC).timestamp())
                for f in lat_frames
            ])
            return latencies, lat_before, scrape(metrics_port)

        latencies, lat_before, lat_after = await latency_at(200.0, index)
        index += 100_000
        easy_rate = args.easy_rate or max(1.0, round(min(200.0, ingest_rate / 2)))
        easy_latencies, _, _ = await latency_at(easy_rate, index)
        await producer.stop()
        await reader.stop()

        floor = min(produce, put)
        print()
        print(f"{'measure':<58}{'value':>14}")
        size = f"{frames.mean_size / 1024:.0f} KB"
        print(f"{f'raw broker produce (aiokafka, acks=all, {size} events)':<58}{produce:>10.0f} /s")
        print(f"{f'raw S3 PUT (minio, {size}, {PUT_THREADS} threads)':<58}{put:>10.0f} /s")
        print(f"{f'ingest end-to-end, {size} JPEG frames, Triton scoring on':<58}{ingest_rate:>10.0f} /s")
        print(f"{'  frames scored by the model':<58}{scored:>10d} / {args.frames}")
        print(f"{'ratio ingest / min(raw)':<58}{ingest_rate / floor:>12.2f}   (target >= 0.5)")
        print(f"{'captured -> ingested latency at 200 frames/s, p50':<58}{np.percentile(latencies, 50):>10.1f} ms")
        print(f"{'captured -> ingested latency at 200 frames/s, p99':<58}{np.percentile(latencies, 99):>10.1f} ms   (target <= 50)")
        label = f"latency at {easy_rate:.0f} frames/s" + ("" if args.easy_rate else " (half the throughput)")
        print(f"{label + ', p50':<58}{np.percentile(easy_latencies, 50):>10.1f} ms")
        print(f"{label + ', p99':<58}{np.percentile(easy_latencies, 99):>10.1f} ms")
        print(f"{'machine load average (1 min) before / after the runs':<58}{load_before:>7.1f} / {os.getloadavg()[0]:.1f}"
              f"   ({os.cpu_count()} CPUs, shared)")
        print()
        print("CPU per ingested frame, by process (throughput run):")
        for name in cpu_before:
            print(f"  {name:<28}{1000 * (cpu_after[name] - cpu_before[name]) / args.frames:>8.2f} ms")
        print()
        for title, (b, a) in (("throughput run", (before, after)), ("200 frames/s run", (lat_before, lat_after))):
            print(f"where the time goes ({title}), mean per frame:")
            for stage, (ms, n) in sorted(stage_means(b, a).items()):
                print(f"  {stage:<20}{ms:>8.2f} ms  ({n:.0f} frames)")
            handler = histogram_mean(b, a, "lineloop_handler_duration_seconds")
            print(f"  {'handler (DB part)':<20}{1000 * handler:>8.2f} ms")
            print(f"  {'Triton batch size':<20}{histogram_mean(b, a, 'lineloop_ingest_score_batch_size'):>8.1f} frames")
    finally:
        if ingest is not None and ingest.poll() is None:
            ingest.send_signal(signal.SIGTERM)
            try:
                ingest.wait(20)
            except subprocess.TimeoutExpired:
                ingest.kill()
        stack.down()
    if args.profile and (state / "ingest.prof").exists():
        import pstats

        print("\ningest's event-loop thread, top functions by own time:")
        pstats.Stats(str(state / "ingest.prof")).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--easy-rate", type=float, default=0.0,
                        help="frames/s of the below-saturation latency run (default: half the measured throughput)")
    parser.add_argument("--profile", action="store_true", help="run ingest under cProfile; print its top functions")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
