"""frames.captured.v1 → the pipeline → frames.ingested.v1 / frames.rejected.v1.

The bus applies the records of a fetched batch one after another, each in its
own transaction. The slow part of a frame (S3, decode, Triton) needs no
transaction, so a FastStream middleware on this subscriber starts it for every
frame of the batch at once (from the bus decoder's `Delivery`s: it decodes
nothing itself; and not for a careful batch, one whose last delivery killed the
process, which the bus handles one record at a time), waits for all of them, and only then lets the bus apply them
in order: Triton sees the batch's frames together, and the database lock is
held for the short index writes only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream import BaseMiddleware

from lineloop.bus import Batch, EventContext
from lineloop.ingest.pipeline import Pipeline, Prepared, Refused
from lineloop.v1.events_pb2 import FrameCaptured

log = logging.getLogger(__name__)


class BatchPrefetch:
    """Prepares the frames of a fetched batch concurrently, ahead of the handler."""

    def __init__(self, pipeline: Pipeline, max_concurrent: int) -> None:
        self.pipeline = pipeline
        self.max_concurrent = max_concurrent
        self._ready: dict[str, asyncio.Task] = {}
        self._slots: asyncio.Semaphore | None = None

    def middleware(self) -> type[BaseMiddleware]:
        prefetch = self

        class PrefetchMiddleware(BaseMiddleware):
            async def consume_scope(self, call_next, msg) -> Any:
                started = await prefetch.start(await msg.decode())
                try:
                    return await call_next(msg)
                finally:
                    prefetch.discard(started)

        return PrefetchMiddleware

    async def start(self, batch: Batch) -> list[str]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        started: list[str] = []
        if batch.careful:
            return started  # one frame at a time, each counted before it starts: see the bus
        for delivery in batch:
            if not delivery.pending:
                continue  # refused by the decoder, or finished before: the bus deals with it
            if delivery.envelope.id in self._ready:
                continue
            self._ready[delivery.envelope.id] = asyncio.create_task(self._bounded(delivery.message))
            started.append(delivery.envelope.id)
        if started:
            await asyncio.wait([self._ready[i] for i in started])
        return started

    async def _bounded(self, frame: FrameCaptured) -> Prepared | Refused:
        async with self._slots:
            return await self.pipeline.prepare(frame)

    async def take(self, event_id: str, frame: FrameCaptured) -> Prepared | Refused:
        """The prepared frame for `event_id`, or prepare it now (a retry, no middleware)."""
        task = self._ready.pop(event_id, None)
        if task is not None:
            return await task
        return await self.pipeline.prepare(frame)

    def discard(self, event_ids: list[str]) -> None:
        """Forget what the handler did not take (already applied, or dead-lettered)."""
        for event_id in event_ids:
            task = self._ready.pop(event_id, None)
            if task is not None and not task.done():
                task.cancel()


def make_handler(pipeline: Pipeline, prefetch: BatchPrefetch):
    async def on_frame_captured(msg: FrameCaptured, ctx: EventContext) -> None:
        outcome = await prefetch.take(ctx.event_id, msg)
        recorded = pipeline.record(ctx.session, outcome, path="kafka", source_event_id=ctx.event_id)
        if recorded.ingested is not None:
            ctx.emit(recorded.ingested)
        elif recorded.rejected is not None:
            ctx.emit(recorded.rejected)

    return on_frame_captured
