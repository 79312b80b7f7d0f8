"""An object-store outage holds frames back; it does not dead-letter them.

Ingest reaches the real S3 store through a TCP relay the test can cut and restore on the
same port, as a store restart or a network partition would look from the service.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from urllib.parse import urlsplit

from lineloop.ingest.testing import (
    EventReader,
    frame,
    ingest_settings,
    jpeg,
    object_store,
    publish,
    running_ingest,
    skip_group_to_end,
    stack_settings,
)


class Relay:
    """127.0.0.1:<port> -> the S3 endpoint, until `cut()`; `restore()` listens on the same port again."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _pipe(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._open |= {client_w, server_w}

        async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.transport.abort()

        try:
            await asyncio.gather(copy(client_r, server_w), copy(server_r, client_w))
        finally:
            self._open -= {client_w, server_w}


async def test_frames_sent_while_the_object_store_is_down_are_ingested_once_it_is_back(stack, tmp_path, line, caplog):
    relay = Relay(stack.s3_endpoint)
    await relay.restore()
    settings = ingest_settings(stack, tmp_path / "ingest.db").model_copy(
        update={"stack": stack_settings(stack, s3_endpoint=relay.url)})
    await skip_group_to_end(stack, settings.consumer_group)
    images = [jpeg(seed=70 + i) for i in range(3)]
    frames = [frame(image, line=line) for image in images]
    caplog.set_level(logging.WARNING, logger="lineloop.bus.bus")
    async with running_ingest(settings), EventReader(stack) as reader:
        await relay.cut()
        await publish(stack, frames)

        # More attempts than a failing handler gets before its event is dead-lettered (3).
        def attempts() -> int:
            return sum(1 for r in caplog.records if "a dependency is unavailable" in r.getMessage())

        deadline = asyncio.get_running_loop().time() + 90
        while attempts() < 4:
            assert asyncio.get_running_loop().time() < deadline, f"only {attempts()} retries logged"
            await asyncio.sleep(0.2)
        # (Records other tests left on the shared topic may be dead-lettered for what they are.)
        assert not any("(handler_error)" in r.getMessage() for r in caplog.records)

        await relay.restore()
        await reader.wait_for([f.frame_id for f in frames], timeout=90)
    await relay.cut()

    assert not any(f.frame_id in reader.rejected for f in frames)
    store = object_store(stack)  # the store itself, not the relay
    for f, image in zip(frames, images, strict=True):
        (ingested,) = reader.ingested[f.frame_id]
        assert ingested.image.sha256 == hashlib.sha256(image).hexdigest()
        assert store.get_bytes(ingested.image.bucket, ingested.image.key) == image
