"""Topic creation on the real broker: replication, min.insync.replicas and the record limit come from
the settings and the one limit constant, not from hard-coded 1s and Kafka's 1 MB default."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import MessageSizeTooLargeError

from lineloop.bus import Bus
from lineloop.bus.topics import TopicSpec, topic_configs
from lineloop.contracts.topics import MAX_DLQ_RECORD_BYTES, MAX_INLINE_IMAGE_BYTES, MAX_RECORD_BYTES, TOPIC_RETENTION_MS
from lineloop.runtime import Service, ServiceSettings, StackSettings


class _Settings(ServiceSettings):
    service_name = "topics-test"


async def _created(stack, monkeypatch, bus: Bus, names: list[str]) -> tuple[dict, dict[str, dict[str, str]]]:
    """Run bus.ensure_topics against the broker; what the CreateTopics request asked, and what the broker reports."""
    asked: dict[str, tuple[int, int, dict]] = {}
    create = AIOKafkaAdminClient.create_topics

    async def recording(self, new_topics, *args, **kwargs):
        asked.update({t.name: (t.num_partitions, t.replication_factor, dict(t.topic_configs)) for t in new_topics})
        return await create(self, new_topics, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaAdminClient, "create_topics", recording)
    await bus.ensure_topics(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        return asked, await topic_configs(admin, names)
    finally:
        await admin.close()


@pytest.mark.parametrize(("replicas", "insync"), [(1, 1), (3, 2)])
async def test_topics_are_created_with_the_configured_replication_and_limits(stack, monkeypatch, tmp_path, replicas,
                                                                              insync):
    """1/1 is the embedded single broker's setting, 3/2 a three-broker cluster's; Tansu stores topic
    configs (so they are read back from it) but ignores replication, so that is checked in the request."""
    service = Service("topics-test", _Settings(stack=StackSettings(
        kafka_bootstrap=stack.kafka_bootstrap, state_dir=tmp_path, topic_replication_factor=replicas,
        topic_min_insync_replicas=insync)))
    names = [f"topics-test-{uuid.uuid4().hex[:8]}", f"topics-test-{uuid.uuid4().hex[:8]}.dlq"]
    asked, described = await _created(stack, monkeypatch, service.bus, names)
    event, dlq = names
    retention = str(TOPIC_RETENTION_MS)
    want = {event: {"min.insync.replicas": str(insync), "max.message.bytes": str(MAX_RECORD_BYTES),
                    "retention.ms": retention},
            dlq: {"min.insync.replicas": str(insync), "max.message.bytes": str(MAX_DLQ_RECORD_BYTES),
                  "retention.ms": retention}}
    assert asked == {n: (3, replicas, want[n]) for n in names}
    assert described == want
    # Idempotent: a second start creates nothing and changes nothing.
    asked, described = await _created(stack, monkeypatch, service.bus, names)
    assert asked == {} and described == want


def test_min_insync_above_the_replication_factor_is_refused():
    with pytest.raises(ValueError, match="LINELOOP_TOPIC_MIN_INSYNC_REPLICAS"):
        StackSettings(topic_replication_factor=1, topic_min_insync_replicas=2)
    with pytest.raises(ValueError, match="min.insync.replicas 3 exceeds the replication factor 2"):
        TopicSpec(3, 2, 3)


def test_the_record_limit_holds_an_inline_image_at_its_limit_as_base64_json():
    base64_image = 4 * ((MAX_INLINE_IMAGE_BYTES + 2) // 3)
    assert MAX_RECORD_BYTES > base64_image + 64 * 1024  # room for the other fields and the CloudEvents headers
    assert MAX_RECORD_BYTES > 1_048_588  # over Kafka's default: the limit is the reason the setting exists
    assert MAX_DLQ_RECORD_BYTES >= MAX_RECORD_BYTES + 4 * 2000 + 1024  # dlq_detail: 2,000 characters, UTF-8


async def test_the_bus_producer_can_dead_letter_a_record_at_the_limit_and_refuses_more(stack):
    """A record at the event topics' limit, with the dlq_* headers added, still fits the DLQ; a larger one is
    refused by the producer with a clear error instead of by the broker."""
    bus = Bus(stack.kafka_bootstrap, source="test/topics")
    topic = f"topics-test-{uuid.uuid4().hex[:8]}.dlq"
    await bus.ensure_topics([topic])
    await bus.broker.start()
    try:
        dlq_headers = {"dlq_reason": "handler_rejected", "dlq_detail": "\u00e9" * 2000, "dlq_topic": topic.removesuffix(".dlq")}
        await bus.broker.publish(b"x" * (MAX_RECORD_BYTES - 100), topic=topic, headers=dlq_headers)
        with pytest.raises(MessageSizeTooLargeError, match="max_request_size"):
            await bus.broker.publish(b"x" * MAX_DLQ_RECORD_BYTES, topic=topic)
    finally:
        await bus.broker.stop()
    # A plain client at Kafka's defaults could not even send the first one: the limit is raised on purpose.
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        with pytest.raises(MessageSizeTooLargeError):
            await producer.send_and_wait(topic, b"x" * (MAX_RECORD_BYTES - 1024))
    finally:
        await producer.stop()
