"""Ingest's own latency floor, one frame at a time, against the broker's in the same run.

Captured -> ingested crosses the broker twice (frames.captured.v1 in, frames.ingested.v1 out),
so the baseline is one broker hop: a record produced (acks=all) and read back by a consumer on
the embedded Tansu. Then ingest runs in this process on the same stack and is sent one 256 px
JPEG frame at a time (no model deployed: no Triton call), each timed from send to its
frames.ingested.v1 arriving. Nothing else loads the machine, so this is the pipeline's latency,
not a queue.

    .venv/bin/python services/ingest/bench/bench_latency.py [--samples 40] [--gap-s 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from lineloop.bus.cloudevents import make_headers
from lineloop.contracts.topics import event_type
from lineloop.ingest import testing
from lineloop.stack.config import StackConfig
from lineloop.stack.embedded import EmbeddedStack
from lineloop.v1.events_pb2 import FrameCaptured, FrameIngested


async def _tail(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5)
    await consumer.start()
    await consumer.topics()
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    return consumer


async def broker_hop(stack: EmbeddedStack, samples: int, gap_s: float) -> np.ndarray:
    topic = "bench.latency.v1"
    await testing.ensure_topics(stack, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=2)
    await producer.start()
    consumer = await _tail(stack.kafka_bootstrap, topic)
    sent: dict[bytes, float] = {}
    arrived: dict[bytes, float] = {}

    async def read() -> None:
        async for record in consumer:
            arrived[record.value] = time.perf_counter()

    reader = asyncio.create_task(read())
    try:
        for i in range(samples):
            value = f"{i}".encode()
            sent[value] = time.perf_counter()
            await producer.send_and_wait(topic, value, key=str(i % 3).encode())
            while value not in arrived:
                await asyncio.sleep(0.002)
            await asyncio.sleep(gap_s)
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()
    return np.array([1000 * (arrived[v] - sent[v]) for v in sent])


async def ingest_one_at_a_time(stack: EmbeddedStack, state: Path, samples: int, gap_s: float) -> np.ndarray:
    await testing.ensure_topics(stack, [event_type(FrameCaptured).topic, event_type(FrameIngested).topic])
    line = testing.uid("bench-latency")
    captured = event_type(FrameCaptured)
    # One long-lived producer, as a gateway keeps, with the same settings as the broker hop's.
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=2)
    await producer.start()
    async with testing.running_ingest(testing.ingest_settings(stack, state / "ingest.db")):
        consumer = await _tail(stack.kafka_bootstrap, event_type(FrameIngested).topic)
        arrived: dict[str, float] = {}

        async def read() -> None:
            async for record in consumer:
                arrived[FrameIngested.FromString(record.value).frame_id] = time.perf_counter()

        reader = asyncio.create_task(read())
        try:
            async def one(index: int) -> float:
                frame = testing.frame(testing.jpeg(11, index, 256), line=line, camera=f"cam-{index % 3}")
                headers = [(k, v.encode()) for k, v in make_headers(captured, source="bench/gateway").items()]
                started = time.perf_counter()
                await producer.send_and_wait(captured.topic, frame.SerializeToString(),
                                             key=captured.key_of(frame), headers=headers)
                while frame.frame_id not in arrived:
                    await asyncio.sleep(0.002)
                return 1000 * (arrived[frame.frame_id] - started)

            await one(samples)  # warm-up: the consumer group joins, the first frame creates the index
            latencies = []
            for i in range(samples):
                latencies.append(await one(i))
                await asyncio.sleep(gap_s)
        finally:
            reader.cancel()
            await consumer.stop()
            await producer.stop()
    return np.array(latencies)


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="lineloop-bench-latency-") as tmp:
        state = Path(tmp)
        stack = EmbeddedStack(StackConfig.on_free_ports(state / "stack"), die_with_parent=True)
        print(f"starting the embedded stack in {state} ...")
        stack.up()
        try:
            hop = await broker_hop(stack, args.samples, args.gap_s)
            ingest = await ingest_one_at_a_time(stack, state, args.samples, args.gap_s)
        finally:
            stack.down()
    print(f"\n{'one at a time, ' + str(args.samples) + ' samples':<52}{'p50 ms':>9}{'p99 ms':>9}")
    for name, values in (("broker hop (produce acks=all -> consumer)", hop),
                         ("ingest: captured -> ingested (2 hops, no model)", ingest)):
        print(f"{name:<52}{np.percentile(values, 50):>9.1f}{np.percentile(values, 99):>9.1f}")
    print(f"ingest p50 / (2 x broker hop p50): {np.percentile(ingest, 50) / (2 * np.percentile(hop, 50)):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--gap-s", type=float, default=0.2, help="pause between samples")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
