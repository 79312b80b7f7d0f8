"""A service's background pass: `work()` every `interval_s` in a task of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `work()` every `interval_s` from `start()` until `stop()`. A failed pass is logged and
    the next one runs: a background job must outlive a database or store that is briefly away."""

    def __init__(self, name: str, work: Callable[[], Awaitable[object]], interval_s: float) -> None:
        self.name = name
        self._work = work
        self._interval_s = interval_s
        self._task: asyncio.Task | None = None

    async def _loop(self) -> None:
        while True:
            try:
                await self._work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; next try in %.0f s", self.name, self._interval_s)
            await asyncio.sleep(self._interval_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
