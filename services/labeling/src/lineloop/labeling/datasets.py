"""Immutable dataset versions: manifest.jsonl in S3 with its sha256, cut by policy or on request.

A manifest is a pure function of the effective labels (one line per frame,
sorted by frame id, no timestamps of the cut), so the same labels always give
the same bytes and hash. Splits come from the frame's sha256 alone, so a frame
never moves between train/val/test across versions; model-made labels never
enter the test split.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics

from lineloop.bus import Bus
from lineloop.contracts.labels import GROUND_TRUTH_SOURCES, SOURCE_NAMES
from lineloop.labeling import queue, state
from lineloop.labeling.label_issues import NotCheckable, Suspect, flag_label_issues
from lineloop.labeling.labels import LabelRejected, utcnow
from lineloop.labeling.queue import as_utc
from lineloop.labeling.settings import LabelingSettings
from lineloop.labeling.splits import split_of
from lineloop.runtime.periodic import Periodic
from lineloop.storage.objects import ObjectStore, sha256_hex
from lineloop.storage.sql import Database
from lineloop.v1.common_pb2 import ObjectRef, Prediction
from lineloop.v1.events_pb2 import DatasetVersioned, LabelCheck

log = logging.getLogger(__name__)
versions_cut = metrics.get_meter("lineloop.labeling").create_counter(
    "lineloop.labeling.dataset_versions", unit="{version}", description="Dataset versions cut. Attributes: dataset, by.",
)

POLICY_ACTOR = "labeling-policy"


def version_name(number: int) -> str:
    return f"v{number:04d}"


def manifest_key(dataset: str, version: str) -> str:
    return f"{dataset}/{version}/manifest.jsonl"


@dataclass
class Manifest:
    data: bytes
    sha256: str
    class_counts: dict[str, int]
    split_counts: dict[str, int]


def build_manifest(entries, cfg: LabelingSettings, unresolved: frozenset[str] = frozenset()) -> Manifest:
    """entries: (frame row, effective LabelCreated), any order. `unresolved`: frames whose label
    was flagged as likely wrong and no second reviewer has seen yet."""
    lines = []
    class_counts: dict[str, int] = {}
    split_counts: dict[str, int] = {}
    for frame, label in sorted(entries, key=lambda e: e[0].frame_id):
        split = split_of(frame.sha256, cfg.split_val, cfg.split_test)
        if split == "test" and label.source not in GROUND_TRUTH_SOURCES:
            continue  # the test split is human ground truth only
        if split == "test" and frame.frame_id in unresolved:
            continue  # a doubted label would judge models; in training it is one noisy frame among many
        lines.append(json.dumps({
            "frame_id": frame.frame_id,
            "line_id": frame.line_id,
            "camera_id": frame.camera_id,
            "bucket": frame.image_bucket,
            "key": frame.image_key,
            "sha256": frame.sha256,
            "label": label.label_class,
            "label_source": SOURCE_NAMES.get(label.source, "unknown"),
            "split": split,
            "captured_at": as_utc(frame.captured_at).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }, sort_keys=True, separators=(",", ":")))
        class_counts[label.label_class] = class_counts.get(label.label_class, 0) + 1
        split_counts[split] = split_counts.get(split, 0) + 1
    data = "".join(line + "\n" for line in lines).encode()
    return Manifest(data, sha256_hex(data), class_counts, split_counts)


class CutBusy(Exception):
    """Another replica is cutting this dataset right now."""


class CutHeld(Exception):
    """Labels of this dataset wait for a second reviewer; the cut waits for them (or the timeout)."""


@dataclass
class Checked:
    """What the label check found in one cut attempt."""
    check: LabelCheck
    new: list[tuple[object, object, Suspect]]   # (frame row, label, suspect) not flagged before


def check_labels(entries, cfg: LabelingSettings, shared: set[str], already: set[str]) -> Checked:
    """Flag likely-wrong ground-truth labels among `entries` (label_issues.py). Only the frames'
    stored predictions are used, and only where they are out-of-sample (see label_issues); frames
    flagged before (`already`) count towards the estimate but are not flagged again."""
    if not cfg.label_check:
        return Checked(LabelCheck(checked=False, not_checked="label check off (LINELOOP_LABELING_LABEL_CHECK)"), [])
    human = [(f, lab) for f, lab in entries if lab.source in GROUND_TRUTH_SOURCES]
    usable = []
    for frame, label in human:
        pred = queue.usable_prediction(Prediction.FromString(frame.prediction)) if frame.prediction else None
        if pred is not None and frame.sha256 not in shared and label.label_class in cfg.classes:
            usable.append((frame, label, dict(pred.scores)))
    method = (f"cleanlab find_label_issues ({cfg.label_check_filter}) on the predictions stored at ingest, "
              "by models trained before the frames existed")
    unchecked = len(human) - len(usable)
    try:
        suspects = flag_label_issues(
            [label.label_class for _, label, _ in usable], [scores for _, _, scores in usable], cfg.classes,
            min_frames=cfg.label_check_min_frames, filter_by=cfg.label_check_filter,
        )
    except NotCheckable as err:
        return Checked(LabelCheck(checked=False, not_checked=f"no usable out-of-fold predictions: {err}",
                                  method=method, frames_unchecked=len(human)), [])
    except Exception as err:  # noqa: BLE001 - cleanlab's own errors: the version says so, the cut is not blocked forever
        log.exception("label check failed; the version records it as not checked")
        return Checked(LabelCheck(checked=False, not_checked=f"the check failed: {type(err).__name__}: {err}",
                                  method=method, frames_unchecked=len(human)), [])
    new = [(usable[x.index][0], usable[x.index][1], x) for x in suspects if usable[x.index][0].frame_id not in already]
    return Checked(LabelCheck(checked=True, method=method, frames_checked=len(usable), frames_unchecked=unchecked), new)


class Datasets:
    """Cutting versions (on request and by policy) and reading them back."""

    def __init__(self, cfg: LabelingSettings, db: Database, bus: Bus, objects: ObjectStore) -> None:
        self.cfg = cfg
        self.db = db
        self.bus = bus
        self.objects = objects
        self._policy = Periodic("dataset-cut-policy", self.apply_policy, self.cfg.policy_interval_s)
        # Per dataset, the label watermark at which a cut found nothing to change (e.g. a frame
        # relabelled to the same class): the policy counts new labels from there, not from the head.
        self._unchanged_at: dict[str, int] = {}

    async def cut(
        self, dataset: str, line_id: str, *, requested_by: str, reason: str, min_new_labels: int = 0,
    ) -> tuple[DatasetVersioned | None, bool]:
        """Cut a new version if the labels changed; (the version, whether it is new).

        With `min_new_labels`, cut only when at least that many human labels arrived
        since the head (checked under the claim, so replicas agree). Returns the
        head unchanged when the manifest would be identical to it.
        """
        if not dataset:
            raise LabelRejected(grpc.StatusCode.INVALID_ARGUMENT, "MISSING_DATASET", "give a dataset name or a line id")
        token = uuid.uuid4().hex
        now = utcnow()
        async with self.db.write() as s:
            claimed = state.claim_dataset(s, dataset, token, now, now + timedelta(seconds=self.cfg.cut_lock_s))
        if not claimed:
            raise CutBusy(f"dataset {dataset!r} is being cut by another request or replica; try again shortly")
        try:
            return await self._cut_claimed(dataset, line_id, token, requested_by, reason, min_new_labels)
        finally:
            async with self.db.write() as s:
                state.release_dataset(s, dataset, token)

    async def _cut_claimed(
        self, dataset: str, line_id: str, token: str, requested_by: str, reason: str, min_new_labels: int
    ) -> tuple[DatasetVersioned | None, bool]:
        with self.db.session() as s:
            head = state.head(s, dataset)
            if head is not None and head.line_id != line_id:
                raise LabelRejected(
                    grpc.StatusCode.INVALID_ARGUMENT, "DATASET_LINE_MISMATCH",
                    f"dataset {dataset!r} is cut from line {head.line_id or '(all lines)'!r}, not {line_id or '(all lines)'!r}",
                )
            since = max(head.label_watermark if head else 0, self._unchanged_at.get(dataset, 0))
            if min_new_labels and state.new_human_labels(s, line_id, since) < min_new_labels:
                return (DatasetVersioned.FromString(head.event) if head else None), False
            waiting = state.waiting_for_review(s, dataset, utcnow())
            if waiting:
                raise CutHeld(f"dataset {dataset!r}: {waiting} labels flagged as likely wrong wait for a second "
                              "reviewer; the cut goes ahead once they are reviewed or their wait runs out")
            watermark = state.max_label_seq(s)
            entries = state.effective_labels(s, line_id, watermark)
            shared, already = state.shared_images(s, line_id), state.flagged_frames(s, dataset)
        number = head.number + 1 if head else 1
        version = version_name(number)
        # CPU work (and cleanlab's first import) off the event loop.
        checked = await asyncio.to_thread(check_labels, entries, self.cfg, shared, already)
        if checked.new:
            await self._flag(dataset, line_id, token, version, checked.new)
            if self.cfg.label_check_timeout_s > 0:
                raise CutHeld(f"dataset {dataset!r}: {len(checked.new)} labels flagged as likely wrong went back to "
                              f"the review queue for a second reviewer; {version} waits for them "
                              f"(at most {self.cfg.label_check_timeout_s:g} s)")
        with self.db.session() as s:
            unresolved = frozenset(state.unresolved_frames(s, dataset))
            checked.check.suspects.extend(state.suspects_to_record(s, dataset))
        manifest = build_manifest(entries, self.cfg, unresolved)
        if head is not None and head.manifest_sha256 == manifest.sha256:
            self._unchanged_at[dataset] = watermark
            return DatasetVersioned.FromString(head.event), False
        if not manifest.data:
            return None, False
        key = manifest_key(dataset, version)
        bucket = self.cfg.datasets_bucket
        # The DB row is the commit point: a crash before it leaves an object the next cut overwrites.
        stored = await self.objects.aio.put_bytes(bucket, key, manifest.data, "application/x-ndjson")
        await self.objects.aio.put_bytes(
            bucket, f"{key}.sha256", f"{manifest.sha256}  manifest.jsonl\n".encode(), "text/plain"
        )
        created = Timestamp()
        now = utcnow()
        created.FromDatetime(now)
        event = DatasetVersioned(
            dataset=dataset, version=version, parent_version=head.version if head else "",
            manifest=ObjectRef(bucket=bucket, key=key, sha256=stored.sha256, size_bytes=stored.size_bytes),
            classes=self.cfg.classes, class_counts=manifest.class_counts, split_counts=manifest.split_counts,
            line_id=line_id, created_by=requested_by, reason=reason, created_at=created, label_check=checked.check,
        )
        async with self.db.write() as s:
            if not state.still_claimed(s, dataset, token, now):
                raise CutBusy(f"the claim on dataset {dataset!r} expired during the cut; nothing was recorded")
            s.execute(state.dataset_versions.insert().values(
                dataset=dataset, number=number, version=version, line_id=line_id, manifest_sha256=manifest.sha256,
                label_watermark=watermark, created_at=now, event=event.SerializeToString(),
            ))
            state.record_suspects(s, dataset, version, [x.frame_id for x in checked.check.suspects])
            self.bus.add_to_outbox(s, event)
        self.bus.relay.wake()
        versions_cut.add(1, {"dataset": dataset, "by": "policy" if requested_by == POLICY_ACTOR else "request"})
        log.info("dataset %s %s cut: %d frames (%s)", dataset, version, sum(manifest.split_counts.values()), reason)
        return event, True

    async def _flag(self, dataset: str, line_id: str, token: str, version: str, new) -> None:
        """Record new suspects and send their frames back to the queue (under the cut's claim)."""
        now = utcnow()
        async with self.db.write() as s:
            if not state.still_claimed(s, dataset, token, now):
                raise CutBusy(f"the claim on dataset {dataset!r} expired during the label check; nothing was recorded")
            for frame, label, suspect in new:
                state.add_suspect(
                    s, dataset=dataset, frame_id=frame.frame_id, line_id=frame.line_id, label_id=label.label_id,
                    label_class=label.label_class, annotator=label.annotator, suggested_class=suspect.suggested_class,
                    score=suspect.score, flagged_in=version, flagged_at=now,
                    wait_until=now + timedelta(seconds=self.cfg.label_check_timeout_s),
                )
        log.info("dataset %s %s: %d labels flagged as likely wrong, back in the review queue", dataset, version, len(new))

    # ---- policy -------------------------------------------------------------

    async def apply_policy(self) -> list[DatasetVersioned]:
        """One pass of the cut policy over every line with labels; returns the versions cut."""
        cut = []
        now = utcnow()
        with self.db.session() as s:
            lines = state.labelled_lines(s)
            plans = []
            for line in lines:
                head = state.head(s, line)
                since = max(head.label_watermark if head else 0, self._unchanged_at.get(line, 0))
                new = state.new_human_labels(s, line, since)
                drifting = bool(state.active_drifts(s, line, now))
                threshold = self.cfg.cut_min_labels_drift if drifting else self.cfg.cut_min_labels
                if new >= threshold:
                    plans.append((line, threshold, f"policy: {new} new human labels >= {threshold}"
                                  + (" (drift active)" if drifting else "")))
                elif self.cfg.cut_schedule_s and new and (
                    head is None or now - as_utc(head.created_at) >= timedelta(seconds=self.cfg.cut_schedule_s)
                ):
                    plans.append((line, 1, f"schedule: every {self.cfg.cut_schedule_s:g}s, {new} new human labels"))
            planned = {line for line, _, _ in plans}
            wanted = state.wanted_evidence(s)
            plans += [(request["dataset"], 1, reason) for request in wanted
                      if request["dataset"] not in planned and (reason := self._evidence_arrived(s, request))]
        for dataset, threshold, reason in plans:
            line = next((r["line_id"] for r in wanted if r["dataset"] == dataset), dataset)
            try:
                version, new_version = await self.cut(
                    dataset, line, requested_by=POLICY_ACTOR, reason=reason, min_new_labels=threshold
                )
            except CutBusy:
                continue  # another replica is on it
            except CutHeld as held:
                log.info("%s", held)  # the next pass tries again
                continue
            if new_version and version is not None:
                cut.append(version)
        return cut

    def _evidence_arrived(self, s, request: dict) -> str:
        """Why to cut now if the test frames a held candidate lacked have all been labelled since it
        asked, else "". Only test-split labels count: the gate judges on nothing else. A version cut
        since it asked (by this rule or another) answers it: the candidate trained on that version
        is gated on it and its decision replaces the request, so one request makes one cut."""
        head = state.head(s, request["dataset"])
        if head is not None and as_utc(head.created_at) >= as_utc(request["asked_at"]):
            return ""
        labelled: dict[str, int] = {}
        for label_class, sha256 in state.human_labels_since(s, request["line_id"], request["label_watermark"]):
            if split_of(sha256, self.cfg.split_val, self.cfg.split_test) == "test":
                labelled[label_class] = labelled.get(label_class, 0) + 1
        got = {cls: sum(labelled.values()) if cls == "" else labelled.get(cls, 0) for cls in request["wanted"]}
        if any(got[cls] < needed for cls, needed in request["wanted"].items()):
            return ""
        return (f"evidence: the test frames {request['model_name']} v{request['model_version']}'s gate lacked are "
                "labelled (" + ", ".join(f"{cls or 'any class'} {got[cls]}/{needed}"
                                         for cls, needed in sorted(request["wanted"].items())) + ")")

    async def start_policy(self) -> None:
        await self._policy.start()

    async def stop_policy(self) -> None:
        await self._policy.stop()
