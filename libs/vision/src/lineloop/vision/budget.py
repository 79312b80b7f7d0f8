"""A budget of decoded pixels shared by the frames a process decodes at once.

A decoded frame's memory grows with its pixels, not its bytes: a 5 MB JPEG of 40 MP
is 160 MB as a Pillow RGB image (4 bytes a pixel), more while it converts. Counting
frames in flight (or threads) does not bound that; counting pixels does. Each frame
holds its pixel count, read from the header before any pixel is decoded, for as long
as its full-resolution image lives, and waits while the budget is spent.

Waiters are served first come, first served, so a large frame is not starved by a
stream of small ones; a frame larger than the whole budget is refused at once instead
of waiting for ever. One budget belongs to one event loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class OverBudget(ValueError):
    """The frame alone needs more pixels than the whole budget: it can never be decoded here."""

    def __init__(self, pixels: int, budget: int) -> None:
        super().__init__(f"{pixels} pixels is more than the whole decode budget of {budget} pixels")
        self.pixels = pixels
        self.budget = budget


class PixelBudget:
    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError(f"a pixel budget must be positive, got {total}")
        self.total = total
        self.in_use = 0
        self.peak = 0  # most pixels ever held at once: what tests and benchmarks read
        self.waits = 0  # acquisitions that had to wait for others to release
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold `pixels` of the budget for the body; raises `OverBudget` if it could never fit."""
        await self.acquire(pixels)
        try:
            yield
        finally:
            self.release(pixels)

    async def acquire(self, pixels: int) -> None:
        if pixels > self.total:
            raise OverBudget(pixels, self.total)
        pixels = max(0, pixels)
        if not self._waiters and self.in_use + pixels <= self.total:
            self._take(pixels)
            return
        self.waits += 1
        granted = asyncio.get_running_loop().create_future()
        entry = (pixels, granted)
        self._waiters.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(pixels)  # granted just as it was cancelled: give it back
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                self._grant()  # it may have been the head that others queued behind
            raise

    def release(self, pixels: int) -> None:
        self.in_use -= max(0, pixels)
        self._grant()

    def _take(self, pixels: int) -> None:
        self.in_use += pixels
        self.peak = max(self.peak, self.in_use)

    def _grant(self) -> None:
        while self._waiters:
            pixels, granted = self._waiters[0]
            if granted.done():  # cancelled while queued
                self._waiters.popleft()
                continue
            if self.in_use + pixels > self.total:
                return
            self._waiters.popleft()
            self._take(pixels)
            granted.set_result(None)
