"""Dataset manifests (written by labeling) and a local content-addressed frame cache.

A manifest is JSON lines, one labelled frame each, with at least `frame_id`,
`key` (in the frames bucket), `sha256`, `label` and `split`. Unknown fields are
kept in `extra`: labeling may add more. Where a manifest is stored is labeling's
business: readers take its `ObjectRef` from the event (see `lineloop.model.dataset`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lineloop.contracts.catalogue import bucket
from lineloop.storage.objects import ObjectStore, sha256_hex

log = logging.getLogger(__name__)

FRAMES_BUCKET = bucket("frames")  # for manifest lines that name no bucket of their own
SPLITS = ("train", "val", "test")
_REQUIRED = ("frame_id", "key", "sha256", "label", "split")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the line and field."""


@dataclass(frozen=True)
class ManifestEntry:
    frame_id: str
    key: str
    sha256: str
    label: str
    split: str
    label_source: str = ""
    camera_id: str = ""
    captured_at: str = ""
    bucket: str = FRAMES_BUCKET
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def parse_manifest(data: bytes) -> list[ManifestEntry]:
    entries: list[ManifestEntry] = []
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as err:
        raise ManifestError(f"manifest is not UTF-8 (byte {err.start})") from err
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ManifestError(f"manifest line {lineno}: not JSON ({err.msg})") from err
        except RecursionError as err:
            raise ManifestError(f"manifest line {lineno}: nested too deep") from err
        if not isinstance(obj, dict):
            raise ManifestError(f"manifest line {lineno}: expected an object")
        missing = [k for k in _REQUIRED if not obj.get(k)]
        if missing:
            raise ManifestError(f"manifest line {lineno}: missing {', '.join(missing)}")
        if obj["split"] not in SPLITS:
            raise ManifestError(f"manifest line {lineno}: split {obj['split']!r} is not one of {SPLITS}")
        sha = str(obj["sha256"]).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ManifestError(f"manifest line {lineno}: sha256 {obj['sha256']!r} is not 64 hex digits")
        known = {"frame_id", "key", "sha256", "label", "split", "label_source", "camera_id", "captured_at", "bucket"}
        entries.append(ManifestEntry(
            frame_id=str(obj["frame_id"]), key=str(obj["key"]), sha256=sha, label=str(obj["label"]),
            split=obj["split"], label_source=str(obj.get("label_source", "")), camera_id=str(obj.get("camera_id", "")),
            captured_at=str(obj.get("captured_at", "")), bucket=str(obj.get("bucket") or FRAMES_BUCKET),
            extra={k: v for k, v in obj.items() if k not in known},
        ))
    if not entries:
        raise ManifestError("manifest has no frames")
    return entries


def class_list(entries: Iterable[ManifestEntry], declared: Iterable[str] = ()) -> list[str]:
    """The model's classes: those the dataset declares, plus any label it uses, sorted.

    Sorted so that two datasets with the same class set give the same output order.
    """
    return sorted(set(declared) | {e.label for e in entries})


class FrameCache:
    """Frames on local disk under their sha256, fetched from S3 once and verified."""

    def __init__(self, root: Path, store: ObjectStore) -> None:
        self.root = Path(root)
        self.store = store
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def fetch(self, entry: ManifestEntry) -> Path:
        path = self.path(entry.sha256)
        if path.exists():
            return path
        data = self.store.get_bytes(entry.bucket, entry.key, expected_sha256=entry.sha256)
        if sha256_hex(data) != entry.sha256:  # the store checks too; the cache must never hold a wrong file
            raise ManifestError(f"frame {entry.frame_id}: content does not match its sha256")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so a crash or a concurrent fetch never leaves half a file under the hash.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return path

    def fetch_all(
        self, entries: list[ManifestEntry], *, threads: int = 8, progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Path]:
        """Fetch every entry (parallel S3 reads); returns local paths in `entries` order."""
        paths: list[Path] = [Path()] * len(entries)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="frame-fetch") as pool:
            for done, (i, path) in enumerate(pool.map(lambda ie: (ie[0], self.fetch(ie[1])), enumerate(entries)), 1):
                paths[i] = path
                if progress is not None:
                    progress(done, len(entries))
                if should_stop is not None and should_stop():
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise InterruptedError("stopped while fetching frames")
        return paths
