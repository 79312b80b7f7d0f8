"""Topics and committed group offsets survive a broker restart (Tansu stores them on S3)."""

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


TOPIC = "restart.checked.v1"
GROUP = "restart-test"
PARTITION = TopicPartition(TOPIC, 0)


def consumer(bootstrap: str, group: str) -> AIOKafkaConsumer:
    # Assigned, not subscribed: committed offsets are what is checked, and a group rejoin
    # after the restart would only wait out the old member's session.
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def read(consumer: AIOKafkaConsumer, count: int) -> list[bytes]:
    values: list[bytes] = []
    while len(values) < count:
        batches = await consumer.getmany(timeout_ms=10_000)
        if not batches:
            break
        values += [record.value for records in batches.values() for record in records]
    return values


async def test_messages_and_committed_offsets_survive_restart(own_stack):
    bootstrap = own_stack.kafka_bootstrap
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i in range(10):
            await producer.send(TOPIC, f"m{i}".encode(), key=b"k", partition=0)
        await producer.flush()
    finally:
        await producer.stop()

    first = consumer(bootstrap, GROUP)
    await first.start()
    first.assign([PARTITION])
    try:
        assert await read(first, 4) != []
        # Commit after the fourth message only: the group must resume at m4.
        await first.commit({PARTITION: 4})
    finally:
        await first.stop()

    assert own_stack.stop_server("kafka")
    assert list(own_stack.up()) == ["kafka"]  # only the broker was down

    resumed = consumer(bootstrap, GROUP)
    await resumed.start()
    resumed.assign([PARTITION])
    try:
        assert await resumed.committed(PARTITION) == 4
        assert await read(resumed, 6) == [f"m{i}".encode() for i in range(4, 10)]
    finally:
        await resumed.stop()

    fresh = consumer(bootstrap, "restart-test-fresh")
    await fresh.start()
    fresh.assign([PARTITION])
    try:
        assert await read(fresh, 10) == [f"m{i}".encode() for i in range(10)]
    finally:
        await fresh.stop()
