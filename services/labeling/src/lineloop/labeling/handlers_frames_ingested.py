"""frames.ingested.v1 -> a frame in the review queue (and a model label when the model is sure)."""

from __future__ import annotations

import re
from datetime import UTC

from sqlalchemy import select

from lineloop.bus import EventContext, Reject
from lineloop.contracts.catalogue import bucket
from lineloop.labeling import labels, queue, state
from lineloop.labeling.settings import LabelingSettings
from lineloop.v1.events_pb2 import FrameIngested, LabelSource

_SHA256 = re.compile(r"[0-9a-f]{64}")


def make_handler(cfg: LabelingSettings):
    async def on_frame_ingested(msg: FrameIngested, ctx: EventContext) -> None:
        missing = [name for name in ("frame_id", "line_id", "camera_id") if not getattr(msg, name)]
        if missing or not msg.image.key or not msg.image.sha256:
            what = ", ".join(missing + ([] if msg.image.key and msg.image.sha256 else ["image.key/sha256"]))
            raise Reject("invalid_frame", f"frame {msg.frame_id!r} lacks {what}")
        if not _SHA256.fullmatch(msg.image.sha256):
            # Splits are computed from it: a malformed one would break every later cut.
            raise Reject("invalid_frame", f"frame {msg.frame_id!r}: image.sha256 {msg.image.sha256[:80]!r} is not 64 hex digits")
        s = ctx.session
        if s.execute(select(state.frames.c.frame_id).where(state.frames.c.frame_id == msg.frame_id)).first():
            return  # the same frame announced again (another ce_id): it is already queued
        pred = queue.usable_prediction(msg.prediction, msg.edge_prediction)
        score, kind = queue.base_score(pred, msg.frame_id, cfg.uncertainty)
        captured = msg.captured_at.ToDatetime(tzinfo=UTC) if msg.HasField("captured_at") else labels.utcnow()
        row = dict(
            frame_id=msg.frame_id, line_id=msg.line_id, camera_id=msg.camera_id,
            image_bucket=msg.image.bucket or bucket("frames"), image_key=msg.image.key, sha256=msg.image.sha256,
            size_bytes=msg.image.size_bytes, captured_at=captured,
            prediction=pred.SerializeToString() if pred else b"",
            predicted_class=(pred.predicted_class or max(pred.scores, key=pred.scores.get)) if pred else "",
            model_name=pred.model_name if pred else "", model_version=pred.model_version if pred else "",
            base_score=score, score_kind=kind,
            # A byte-identical image is already queued: labelling it twice teaches the model nothing.
            in_queue=not msg.duplicate,
            lease_id=None, leased_by=None, lease_expires_at=None,
        )
        s.execute(state.frames.insert().values(**row))
        if pred is not None:
            top = max(pred.scores.values())
            top_class = row["predicted_class"]
            if top >= cfg.auto_accept_threshold and top_class in cfg.classes:
                frame = s.execute(select(state.frames).where(state.frames.c.frame_id == msg.frame_id)).first()
                label = labels.make_label(
                    frame, top_class, LabelSource.LABEL_SOURCE_MODEL, f"model:{pred.model_name}@{pred.model_version}",
                    f"auto-accepted: score {top:.4f} >= {cfg.auto_accept_threshold}", labels.utcnow(), pred,
                )
                labels.record(s, label, f"model:{msg.frame_id}", ctx.emit)
                labels.created.add(1, {"source": "model"})

    return on_frame_ingested
