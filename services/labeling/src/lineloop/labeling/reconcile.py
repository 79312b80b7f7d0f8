"""Reconciliation of the datasets bucket with labeling's dataset versions (report only).

Every committed dataset version must have its manifest, intact (its sha256 as recorded), and
every frame the manifest lists must exist in the object store: training, the registry's gate
and the compiler read them. Objects in the bucket that no committed version owns are listed
as `unowned` but not counted as an inconsistency: a cut writes its manifest before the row
that commits it, and a cut that failed leaves one the next cut of that version overwrites;
synthetic datasets (`lineloop.model.synthetic`) are written there without labeling too.
Nothing is deleted.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from lineloop.labeling import state
from lineloop.labeling.settings import LabelingSettings
from lineloop.model.manifest import ManifestError, parse_manifest
from lineloop.storage.objects import ObjectNotFound, ObjectStore, Sha256Mismatch
from lineloop.storage.sql import Database, sqlite_file_exists


class NoLabelingDatabase(RuntimeError):
    """Labeling's database has no labeling schema (labeling never ran against it)."""


@dataclasses.dataclass(frozen=True)
class BrokenVersion:
    dataset: str
    version: str
    key: str
    problem: str  # missing | sha256 mismatch: ... | unreadable: ...


@dataclasses.dataclass(frozen=True)
class MissingFrame:
    dataset: str
    version: str
    frame_id: str
    bucket: str
    key: str


@dataclasses.dataclass
class DatasetReport:
    checked_at: datetime
    bucket: str
    versions: int = 0
    entries: int = 0
    broken_manifests: list[BrokenVersion] = dataclasses.field(default_factory=list)
    missing_frames: list[MissingFrame] = dataclasses.field(default_factory=list)
    unowned: list[str] = dataclasses.field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.broken_manifests and not self.missing_frames

    def as_dict(self) -> dict:
        return {
            "checked_at": self.checked_at.isoformat(),
            "bucket": self.bucket,
            "versions": self.versions,
            "entries": self.entries,
            "broken_manifests": [dataclasses.asdict(b) for b in self.broken_manifests],
            "missing_frames": [dataclasses.asdict(m) for m in self.missing_frames],
            "unowned": self.unowned,
            "consistent": self.consistent,
        }


def find_dataset_inconsistencies(settings: LabelingSettings | None = None) -> DatasetReport:
    """Check the labeling deployment `settings` describes (default: the environment's).

    Raises:
        NoLabelingDatabase: its database has no labeling schema.
    """
    settings = settings or LabelingSettings()
    stack = settings.stack
    if not sqlite_file_exists(settings.sql_url):
        raise NoLabelingDatabase(f"no labeling database at {settings.sql_url}")
    db = Database(settings.sql_url)
    try:
        try:
            if db.schema_version(state.SCHEMA_COMPONENT) is None:
                raise NoLabelingDatabase(f"no labeling schema in {db.safe_url}")
        except SQLAlchemyError as exc:
            raise NoLabelingDatabase(f"no labeling schema in {db.safe_url}: {exc.__class__.__name__}") from exc
        objects = stack.object_store()
        return check_datasets(db, objects, settings.datasets_bucket)
    finally:
        db.dispose()


def check_datasets(db: Database, objects: ObjectStore, bucket: str) -> DatasetReport:
    report = DatasetReport(checked_at=datetime.now(UTC), bucket=bucket)
    # Listed first: a version committed after the listing has its manifest in it already.
    listed = set(objects.list_keys(bucket))
    with db.session() as session:
        versions = state.list_versions(session, "")
    report.versions = len(versions)
    owned: set[str] = set()
    frame_buckets: dict[str, set[str]] = {}
    for version in versions:
        ref = version.manifest
        owned.update((ref.key, f"{ref.key}.sha256"))
        try:
            entries = parse_manifest(objects.get_bytes(ref.bucket, ref.key, expected_sha256=ref.sha256 or None))
        except ObjectNotFound:
            report.broken_manifests.append(BrokenVersion(version.dataset, version.version, ref.key, "missing"))
            continue
        except Sha256Mismatch as exc:
            report.broken_manifests.append(BrokenVersion(
                version.dataset, version.version, ref.key, f"sha256 mismatch: recorded {exc.expected}, content {exc.actual}"))
            continue
        except ManifestError as exc:
            report.broken_manifests.append(BrokenVersion(version.dataset, version.version, ref.key, f"unreadable: {exc}"))
            continue
        report.entries += len(entries)
        for entry in entries:
            if entry.bucket not in frame_buckets:
                frame_buckets[entry.bucket] = set(objects.list_keys(entry.bucket))
            if entry.key in frame_buckets[entry.bucket] or _exists(objects, entry.bucket, entry.key):
                continue
            report.missing_frames.append(MissingFrame(version.dataset, version.version, entry.frame_id,
                                                      entry.bucket, entry.key))
    report.unowned = sorted(listed - owned)
    return report


def _exists(objects: ObjectStore, bucket: str, key: str) -> bool:
    try:
        objects.stat(bucket, key)
        return True
    except ObjectNotFound:
        return False
