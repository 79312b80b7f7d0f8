"""`lineloop dlq list|show|replay`: what the services refused, and sending it back once the cause is fixed.

Reads the `<topic>.dlq` topics straight from the broker (`--bootstrap`, default
LINELOOP_KAFKA_BOOTSTRAP). A DLQ record is named `<dlq topic>/<partition>/<offset>`.
`replay` republishes a record to its original topic with its original headers (the
ce_id too: a consumer that already applied the event skips it) plus `dlq_replayed_from`,
and writes a receipt record (header `dlq_replay_of`) to the DLQ topic itself, so
`list` shows what was replayed and a second replay needs `--again` (the receipts are the
durable count; the consuming service counts replays it takes in lineloop.dlq.replayed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from google.protobuf import json_format
from rich.table import Table

from lineloop.bus.bus import REPLAYED_FROM
from lineloop.bus.cloudevents import decode, header_dict
from lineloop.bus.errors import Reject
from lineloop.cli.common import console, err_console, print_json
from lineloop.contracts.topics import BY_TOPIC
from lineloop.runtime import StackSettings

app = typer.Typer(no_args_is_help=True)

REPLAY_OF = "dlq_replay_of"  # on a receipt: `<partition>/<offset>` of the DLQ record replayed
_DLQ_HEADERS = ("dlq_reason", "dlq_detail", "dlq_topic", "dlq_partition", "dlq_offset", "dlq_consumer_group", "dlq_time")

JsonOption = typer.Option(False, "--json", help="Machine-readable output.")
BootstrapOption = typer.Option(None, "--bootstrap", help="Kafka bootstrap (default: LINELOOP_KAFKA_BOOTSTRAP or 127.0.0.1:9092).")
TopicOption = typer.Option(None, "--topic", help="Only this topic's DLQ (the event topic or its .dlq name).")
ReasonOption = typer.Option(None, "--reason", help="Only records dead-lettered for this reason (e.g. poison, handler_error).")


@dataclass
class DlqRecord:
    dlq_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int
    replays: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.dlq_topic}/{self.partition}/{self.offset}"

    @property
    def topic(self) -> str:
        return self.headers.get("dlq_topic") or self.dlq_topic.removesuffix(".dlq")

    def summary(self) -> dict:
        h = self.headers
        return {
            "dlq": self.name, "dlq_topic": self.dlq_topic, "partition": self.partition, "offset": self.offset,
            "reason": h.get("dlq_reason", ""), "detail": h.get("dlq_detail", ""),
            "topic": self.topic, "original_partition": _int(h.get("dlq_partition")),
            "original_offset": _int(h.get("dlq_offset")), "consumer_group": h.get("dlq_consumer_group", ""),
            "ce_id": h.get("ce_id", ""), "ce_type": h.get("ce_type", ""), "time": h.get("dlq_time", ""),
            "replayed_from": h.get(REPLAYED_FROM), "replays": self.replays,
        }


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _bootstrap(override: str | None) -> str:
    return override or StackSettings().kafka_bootstrap


def _dlq_topics(topic: str | None) -> list[str]:
    dlqs = sorted(et.dlq_topic for et in BY_TOPIC.values())
    if topic is None:
        return dlqs
    name = topic if topic.endswith(".dlq") else f"{topic}.dlq"
    if name not in dlqs:
        err_console.print(f"[red]no such topic {topic!r}[/red]; DLQ topics: {', '.join(dlqs)}")
        raise typer.Exit(2)
    return [name]


async def _read(bootstrap: str, topics: list[str]) -> list[DlqRecord]:
    """Every record of `topics` up to their current end, receipts folded into the records they replayed."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                client_id="lineloop-cli-dlq", **StackSettings().kafka_security().client_options())
    await consumer.start()
    try:
        existing = await consumer.topics()
        parts = [TopicPartition(t, p) for t in topics if t in existing for p in consumer.partitions_for_topic(t) or ()]
        if not parts:
            return []
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        pending = {tp for tp in parts if ends[tp] > 0}
        raw = []
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                raw.extend(records)
                if records and records[-1].offset >= ends[tp] - 1:
                    pending.discard(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    records: dict[str, DlqRecord] = {}
    receipts = []
    for r in raw:
        headers = header_dict(r.headers)
        if REPLAY_OF in headers:
            receipts.append((r.topic, headers))
            continue
        rec = DlqRecord(r.topic, r.partition, r.offset, r.key, r.value or b"", headers, r.timestamp)
        records[rec.name] = rec
    for topic, headers in receipts:
        target = records.get(f"{topic}/{headers[REPLAY_OF]}")
        if target is not None:
            target.replays.append({"to": headers.get("dlq_replayed_to", ""), "at": headers.get("dlq_replayed_at", "")})
    return sorted(records.values(), key=lambda r: (r.dlq_topic, r.timestamp_ms, r.partition, r.offset))


def _load(bootstrap: str | None, topic: str | None, reason: str | None) -> list[DlqRecord]:
    address = _bootstrap(bootstrap)
    try:
        StackSettings().kafka_security()
    except ValueError as exc:
        err_console.print(f"[red]Kafka settings:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        records = asyncio.run(_read(address, _dlq_topics(topic)))
    except KafkaError as exc:
        err_console.print(f"[red]the broker is not reachable at {address}[/red] (is `make up` running?): {exc}")
        raise typer.Exit(3) from None
    return [r for r in records if reason is None or r.headers.get("dlq_reason") == reason]


@app.command("list")
def list_(
    topic: str | None = TopicOption,
    reason: str | None = ReasonOption,
    bootstrap: str | None = BootstrapOption,
    as_json: bool = JsonOption,
) -> None:
    """Dead-lettered records, oldest first, per DLQ topic."""
    records = _load(bootstrap, topic, reason)
    if as_json:
        print_json([r.summary() for r in records])
        return
    if not records:
        console.print("no dead-lettered records")
        return
    table = Table(title=f"{len(records)} dead-lettered records")
    for column in ("dlq record", "reason", "detail", "original", "group", "ce_id", "time", "replayed"):
        table.add_column(column)
    for r in records:
        s = r.summary()
        table.add_row(
            s["dlq"], s["reason"], s["detail"][:80], f"{s['topic']}/{s['original_partition']}/{s['original_offset']}",
            s["consumer_group"], s["ce_id"], s["time"], str(len(r.replays)) if r.replays else "",
        )
    console.print(table)


def _find(records: list[DlqRecord], name: str) -> DlqRecord:
    for r in records:
        if r.name == name:
            return r
    err_console.print(f"[red]no DLQ record {name}[/red] (names look like <topic>.dlq/<partition>/<offset>; see `lineloop dlq list`)")
    raise typer.Exit(1)


@app.command("show")
def show(
    record: str = typer.Argument(..., help="<topic>.dlq/<partition>/<offset>, as `lineloop dlq list` names it."),
    bootstrap: str | None = BootstrapOption,
    as_json: bool = JsonOption,
) -> None:
    """One DLQ record in full: headers, payload size, the payload decoded if it decodes."""
    topic = record.split("/", 1)[0]
    rec = _find(_load(bootstrap, topic, None), record)
    out = {**rec.summary(), "headers": dict(sorted(rec.headers.items())), "key": (rec.key or b"").decode("utf-8", "replace"),
           "payload_bytes": len(rec.value)}
    et = BY_TOPIC.get(rec.topic)
    original_headers = {k: v for k, v in rec.headers.items() if k not in _DLQ_HEADERS}
    try:
        if et is None:
            raise Reject("unknown_topic", f"{rec.topic} is not an event topic")
        message, _ = decode(et, rec.value, original_headers)
        out["payload"] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    except Reject as rej:
        out["payload"] = None
        out["payload_error"] = f"{rej.reason}: {rej.detail}"
    if as_json:
        print_json(out)
        return
    console.print(f"[bold]{rec.name}[/bold]  {out['reason']}: {out['detail']}")
    console.print(f"  original  {out['topic']}/{out['original_partition']}/{out['original_offset']} (group {out['consumer_group']})")
    console.print(f"  ce_id     {out['ce_id']}  ({out['ce_type']})")
    console.print(f"  payload   {out['payload_bytes']} bytes")
    for replay in rec.replays:
        console.print(f"  replayed  to {replay['to']} at {replay['at']}")
    for k, v in out["headers"].items():
        console.print(f"  [dim]{k}[/dim] {v}")
    if out["payload"] is not None:
        print_json(out["payload"])
    else:
        console.print(f"  [yellow]does not decode[/yellow]: {out['payload_error']}")


async def _replay(bootstrap: str, records: list[DlqRecord]) -> list[dict]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id="lineloop-cli-dlq",
                                **StackSettings().kafka_security().client_options())
    await producer.start()
    done = []
    try:
        for rec in records:
            headers = {k: v for k, v in rec.headers.items() if k not in _DLQ_HEADERS}
            headers[REPLAYED_FROM] = rec.name
            sent = await producer.send_and_wait(
                rec.topic, rec.value, key=rec.key, headers=[(k, v.encode()) for k, v in headers.items()],
            )
            to = f"{sent.topic}/{sent.partition}/{sent.offset}"
            at = datetime.now(UTC).isoformat()
            # The receipt goes after the replay: a crash between them shows the record as not replayed.
            await producer.send_and_wait(rec.dlq_topic, b"", key=rec.key, headers=[
                (REPLAY_OF, f"{rec.partition}/{rec.offset}".encode()), ("dlq_replayed_to", to.encode()),
                ("dlq_replayed_at", at.encode()),
            ])
            done.append({"dlq": rec.name, "ce_id": rec.headers.get("ce_id", ""), "replayed_to": to, "at": at})
    finally:
        await producer.stop()
    return done


@app.command("replay")
def replay(
    topic: str | None = TopicOption,
    reason: str | None = ReasonOption,
    offset: list[str] = typer.Option([], "--offset", help="A DLQ record: <partition>/<offset>, or <offset> alone (repeatable)."),
    all_: bool = typer.Option(False, "--all", help="Replay every record that matches --topic/--reason."),
    again: bool = typer.Option(False, "--again", help="Also replay records that were replayed before."),
    bootstrap: str | None = BootstrapOption,
    as_json: bool = JsonOption,
) -> None:
    """Republish DLQ records to their original topic (same ce_id and headers), once the cause is fixed."""
    if not offset and not all_:
        err_console.print("[red]say which records[/red]: --offset <partition>/<offset> (with --topic), or --all")
        raise typer.Exit(2)
    if offset and topic is None:
        err_console.print("[red]--offset needs --topic[/red]: offsets are per DLQ topic")
        raise typer.Exit(2)
    records = _load(bootstrap, topic, reason)
    if offset:
        wanted = [o.split("/") for o in offset]
        records = [r for r in records if any(
            (len(w) == 1 and w[0] == str(r.offset)) or (len(w) == 2 and w == [str(r.partition), str(r.offset)])
            for w in wanted)]
    if not records:
        filters = " ".join(f"{k} {v}" for k, v in (("--topic", topic), ("--reason", reason), ("--offset", ",".join(offset))) if v)
        err_console.print(f"[red]no DLQ record matches[/red] {filters or '(no filter)'}; nothing replayed")
        raise typer.Exit(1)
    skipped = [r for r in records if r.replays and not again]
    todo = [r for r in records if r not in skipped]
    for r in skipped:
        err_console.print(f"[yellow]{r.name} was already replayed[/yellow] (to {r.replays[-1]['to']}); --again to replay it again")
    if not todo:
        err_console.print("[red]every matching record was already replayed[/red]; nothing replayed")
        raise typer.Exit(1)
    address = _bootstrap(bootstrap)
    try:
        done = asyncio.run(_replay(address, todo))
    except KafkaError as exc:
        err_console.print(f"[red]replay failed at {address}[/red]: {exc}")
        raise typer.Exit(3) from None
    if as_json:
        print_json(done)
        return
    for d in done:
        console.print(f"replayed {d['dlq']} -> {d['replayed_to']} (ce_id {d['ce_id']})")
