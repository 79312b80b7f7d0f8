"""Label Studio interop for image classification (`<Choices name="label" toName="image">`).

Export: Label Studio's JSON import format, one task per frame: `data.image` a
presigned S3 URL, the frame's identity beside it in `data`, the model's
prediction as a pre-annotation and existing labels as annotations (each
carrying its lineloop label id in `meta`). Import: Label Studio's JSON export;
every annotation with one class becomes an IMPORT label. The whole file is
checked before anything is stored; annotations already known (by lineloop label
id or Label Studio annotation id) are skipped, so a round trip changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from sqlalchemy import select
from sqlalchemy.orm import Session

from lineloop.contracts.labels import SOURCE_NAMES
from lineloop.labeling import labels, state
from lineloop.labeling.labels import Emit, LabelRejected
from lineloop.labeling.queue import as_utc
from lineloop.storage.objects import ObjectStore
from lineloop.v1.common_pb2 import Prediction
from lineloop.v1.events_pb2 import LabelSource

FROM_NAME = "label"
TO_NAME = "image"


def labeling_config(classes: list[str]) -> str:
    """The Label Studio project config these tasks are made for."""
    choices = "".join(f'<Choice value="{c}"/>' for c in classes)
    return (
        f'<View><Image name="{TO_NAME}" value="$image"/>'
        f'<Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single">{choices}</Choices></View>'
    )


def _choice(cls: str, region_id: str) -> list[dict[str, Any]]:
    return [{"id": region_id, "from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
             "value": {"choices": [cls]}}]


def export_rows(s: Session, line_id: str, max_tasks: int, only_unlabelled: bool):
    query = select(state.frames).order_by(state.frames.c.base_score.desc(), state.frames.c.frame_id)
    if line_id:
        query = query.where(state.frames.c.line_id == line_id)
    if only_unlabelled:
        query = query.where(state.frames.c.in_queue)
    if max_tasks > 0:
        query = query.limit(max_tasks)
    rows = s.execute(query).all()
    return [(row, state.label_history(s, row.frame_id)) for row in rows]


def export_tasks(rows, objects: ObjectStore, url_expiry_s: int) -> bytes:
    tasks = []
    for row, history in rows:
        task: dict[str, Any] = {
            "data": {
                "image": objects.presigned_get(row.image_bucket, row.image_key, timedelta(seconds=url_expiry_s)),
                "frame_id": row.frame_id,
                "line_id": row.line_id,
                "camera_id": row.camera_id,
                "sha256": row.sha256,
                "bucket": row.image_bucket,
                "key": row.image_key,
                "captured_at": as_utc(row.captured_at).isoformat(),
            },
        }
        if row.prediction:
            pred = Prediction.FromString(row.prediction)
            task["predictions"] = [{
                "model_version": f"{pred.model_name}@{pred.model_version}",
                "score": max(pred.scores.values(), default=0.0),
                "result": _choice(row.predicted_class, f"pred-{row.frame_id}"),
            }]
        annotations = [
            {
                "result": _choice(label.label_class, f"label-{label.label_id}"),
                "created_at": label.created_at.ToJsonString(),
                "meta": {"lineloop_label_id": label.label_id, "annotator": label.annotator,
                         "source": SOURCE_NAMES.get(label.source, "unknown"), "note": label.note},
            }
            # A person's answers, verified or not (an unverified import is what a reviewer confirms).
            for label in history if label.source != LabelSource.LABEL_SOURCE_MODEL
        ]
        if annotations:
            task["annotations"] = annotations
        tasks.append(task)
    return json.dumps(tasks, indent=1).encode()


def _created_at(annotation: dict, where: str) -> datetime | None:
    """When the annotator made it (Label Studio's ISO 8601 `created_at`), kept through import."""
    raw = annotation.get("created_at")
    if raw in (None, ""):
        return None
    try:
        when = datetime.fromisoformat(str(raw))
    except ValueError:
        raise _bad(f"{where}: created_at {raw!r} is not an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _bad(message: str) -> LabelRejected:
    return LabelRejected(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_LABEL_STUDIO_FILE", message)


def _annotator(annotation: dict) -> str:
    meta = annotation.get("meta") if isinstance(annotation.get("meta"), dict) else {}
    if meta.get("annotator"):
        return str(meta["annotator"])
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return f"labelstudio:{who}" if who not in (None, "") else "labelstudio"


def parse_export(data: bytes, classes: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Validate a Label Studio JSON export; (annotations to import, annotations skipped as empty/cancelled)."""
    try:
        tasks = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise _bad(f"not a Label Studio JSON export: {exc}") from None
    if not isinstance(tasks, list):
        raise _bad(f"expected a JSON array of tasks, got {type(tasks).__name__}")
    found = []
    skipped = 0
    for i, task in enumerate(tasks):
        where = f"task #{i}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise _bad(f"{where}: a task is an object with a `data` object")
        frame_id = task["data"].get("frame_id")
        if not isinstance(frame_id, str) or not frame_id:
            raise _bad(f"{where}: no data.frame_id (only tasks exported by lineloop can be imported)")
        annotations = task.get("annotations", task.get("completions", []))
        if not isinstance(annotations, list):
            raise _bad(f"{where} ({frame_id}): `annotations` must be a list")
        for j, annotation in enumerate(annotations):
            where = f"task #{i} ({frame_id}) annotation #{j}"
            if not isinstance(annotation, dict) or not isinstance(annotation.get("result", []), list):
                raise _bad(f"{where}: an annotation is an object with a `result` list")
            if annotation.get("was_cancelled"):
                skipped += 1
                continue
            chosen = []
            for region in annotation.get("result", []):
                if not isinstance(region, dict):
                    raise _bad(f"{where}: result entries are objects")
                if region.get("type") != "choices":
                    continue
                value = region.get("value")
                if not isinstance(value, dict) or not isinstance(value.get("choices"), list):
                    raise _bad(f"{where}: a choices result needs value.choices as a list")
                chosen.extend(value["choices"])
            if not chosen:
                skipped += 1
                continue
            if len(chosen) != 1 or not isinstance(chosen[0], str):
                raise _bad(f"{where}: image classification takes exactly one choice, got {chosen!r}")
            labels.check_class(chosen[0], classes, f"{where}: ")
            meta = annotation.get("meta") if isinstance(annotation.get("meta"), dict) else {}
            if meta.get("lineloop_label_id"):
                key = f"lineloop:{meta['lineloop_label_id']}"
            elif annotation.get("id") not in (None, ""):
                key = f"labelstudio:{frame_id}:{annotation['id']}"
            else:
                digest = hashlib.sha256(json.dumps(annotation, sort_keys=True).encode()).hexdigest()[:32]
                key = f"labelstudio:{frame_id}:{digest}"
            found.append({
                "frame_id": frame_id, "label_class": chosen[0], "annotator": _annotator(annotation),
                "created_at": _created_at(annotation, where),
                "note": str(meta.get("note") or f"imported from Label Studio task {task.get('id', '?')}"),
                "key": key, "label_id": meta.get("lineloop_label_id"), "where": where,
            })
    return found, skipped


def import_export(s: Session, parsed: list[dict[str, Any]], emit: Emit, *, source: int) -> tuple[int, int]:
    """Store the parsed annotations in the caller's transaction, as labels of `source`
    (LABEL_SOURCE_IMPORT or LABEL_SOURCE_IMPORT_UNVERIFIED); (imported, skipped as already known)."""
    imported = skipped = 0
    for item in parsed:
        frame = labels.known_frame(s, item["frame_id"], f"{item['where']}: ")
        if item["label_id"]:
            if s.execute(select(state.labels.c.label_id).where(state.labels.c.label_id == item["label_id"])).first():
                skipped += 1
                continue
        if state.label_by_dedupe_key(s, item["key"]) is not None:
            skipped += 1
            continue
        label = labels.make_label(
            frame, item["label_class"], source, item["annotator"], item["note"],
            item["created_at"] or labels.utcnow(),
        )
        labels.record(s, label, item["key"], emit)
        imported += 1
    return imported, skipped
