"""Which split a labelled frame lands in: fixed by its image, so it never moves between versions."""

from __future__ import annotations


def split_of(sha256: str, val: float, test: float) -> str:
    """train / val / test from the first 64 bits of the frame's sha256."""
    x = int(sha256[:16], 16) / 2**64
    if x < test:
        return "test"
    if x < test + val:
        return "val"
    return "train"
