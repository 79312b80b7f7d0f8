"""Creating the event topics: partitions, replication, `min.insync.replicas` and the record limit.

Producers send with acks=all, which waits for the in-sync replicas only: with one replica, or
`min.insync.replicas=1`, an acknowledged record lives on one disk. So the replication factor and
`min.insync.replicas` are deployment settings (`LINELOOP_TOPIC_REPLICATION_FACTOR`,
`LINELOOP_TOPIC_MIN_INSYNC_REPLICAS`: 3/2 on a three-broker cluster, 1/1 on the embedded single
broker), applied when a topic is created. `max.message.bytes` is the record limit derived from the
inline image limit (`MAX_RECORD_BYTES`), a little more on a DLQ (`MAX_DLQ_RECORD_BYTES`);
`retention.ms` is `TOPIC_RETENTION_MS`, which the consumers' inboxes outlive.

Topics that already exist are left as they are (changing replication needs a reassignment, and
AlterConfigs would reset every other setting an operator made); where they differ from the
settings a warning says how.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from lineloop.bus.security import PLAINTEXT, KafkaSecurity
from lineloop.contracts.topics import BY_TOPIC, MAX_DLQ_RECORD_BYTES, MAX_RECORD_BYTES, TOPIC_RETENTION_MS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """How every lineloop topic is created."""

    partitions: int = 3
    replication_factor: int = 1
    min_insync_replicas: int = 1

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.replication_factor < 1 or self.min_insync_replicas < 1:
            raise ValueError(f"partitions, replication factor and min.insync.replicas must be at least 1: {self}")
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min.insync.replicas {self.min_insync_replicas} exceeds the replication factor "
                             f"{self.replication_factor}: no acks=all write could ever succeed")

    def configs(self, name: str) -> dict[str, str]:
        limit = MAX_DLQ_RECORD_BYTES if name.endswith(".dlq") else MAX_RECORD_BYTES
        return {"min.insync.replicas": str(self.min_insync_replicas), "max.message.bytes": str(limit),
                "retention.ms": str(TOPIC_RETENTION_MS)}

    def new_topic(self, name: str) -> NewTopic:
        return NewTopic(name, self.partitions, self.replication_factor, topic_configs=self.configs(name))


def event_topics() -> list[str]:
    """Every event topic and its DLQ."""
    return [n for t in BY_TOPIC.values() for n in (t.topic, t.dlq_topic)]


async def ensure_topics(bootstrap: str, spec: TopicSpec, names: list[str] | None = None, *,
                        client_id: str = "lineloop-admin", security: KafkaSecurity = PLAINTEXT) -> list[str]:
    """Create the missing ones of `names` (default: every event topic and DLQ); the names created."""
    names = names if names is not None else event_topics()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, **security.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec.new_topic(n) for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another replica created them meanwhile
            log.info("created topics %s (replication %d, min.insync.replicas %d)", [t.name for t in missing],
                     spec.replication_factor, spec.min_insync_replicas)
        present = [n for n in names if n in existing]
        if present:
            await _warn_on_drift(admin, spec, present)
        return [t.name for t in missing]
    finally:
        await admin.close()


async def topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """The settings `TopicSpec.configs` manages, as the broker reports them, per topic."""
    wanted = list(TopicSpec().configs(""))
    # Every config, filtered here: Tansu closes the connection on a request that names them.
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, _message, _type, name, entries, *_ in response.resources:
            if error_code == 0:
                found[name] = {entry[0]: entry[1] for entry in entries if entry[0] in wanted}
    return found


async def _warn_on_drift(admin: AIOKafkaAdminClient, spec: TopicSpec, names: list[str]) -> None:
    try:
        actual = await topic_configs(admin, names)
    except Exception as err:  # a broker without DescribeConfigs: nothing to compare, nothing broken
        log.debug("cannot describe topic configs: %s", err)
        return
    for name in names:
        drift = {k: (actual.get(name, {}).get(k), v) for k, v in spec.configs(name).items()
                 if actual.get(name, {}).get(k) != v}
        if drift:
            log.warning("topic %s exists with %s (settings want %s); set them with kafka-configs.sh --alter "
                        "--entity-type topics --entity-name %s --add-config %s", name,
                        {k: a for k, (a, _) in drift.items()}, {k: w for k, (_, w) in drift.items()}, name,
                        ",".join(f"{k}={w}" for k, (_, w) in drift.items()))
