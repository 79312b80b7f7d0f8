"""models.promoted.v1: a new production model starts a new reference window on its lines; every
stage change (canaries, rollbacks, archiving) goes on the dashboard's model-version timeline."""

from __future__ import annotations

from lineloop.bus import EventContext
from lineloop.monitor import alerts, state
from lineloop.storage.sql import utcnow
from lineloop.v1 import common_pb2, events_pb2


def stage_name(stage: int) -> str:
    return common_pb2.Stage.Name(stage).removeprefix("STAGE_").lower()


async def on_model_promoted(msg: events_pb2.ModelPromoted, ctx: EventContext) -> None:
    state.record_model_change(
        ctx.session, model_name=msg.model_name, version=msg.version, stage=stage_name(msg.stage),
        previous_stage=stage_name(msg.previous_stage),
        changed_at=msg.promoted_at.ToDatetime(tzinfo=utcnow().tzinfo) if msg.HasField("promoted_at") else utcnow(),
        actor=msg.actor, reason=msg.reason,
        lines=", ".join(f"{d.line_id}: production v{d.production_version or '-'}"
                        + (f", canary v{d.canary_version} at {d.canary_share:.0%}" if d.canary_version else "")
                        for d in msg.deployments),
    )
    if msg.stage != common_pb2.STAGE_PRODUCTION:
        return
    # In line order: two replicas promoting at once lock the lines' rows in the same order.
    for line_id in sorted({d.line_id for d in msg.deployments}):
        # Frames scored by the new model (after drift, under the new conditions)
        # become what "normal" looks like; the drift episode is over.
        state.restart_reference(ctx.session, line_id, msg.model_name)
        # Its drift alerts (the line's and its cameras') were against the old reference: their
        # condition has ended. Line row locked first by restart_reference, alert rows after.
        now = utcnow()
        for row in state.active_alerts(ctx.session, line_id, kinds=alerts.DRIFT_KINDS):
            alerts.clear_alert(ctx.session, ctx.emit, row, now=now, score=0.0,
                               detail=f"{msg.model_name} v{msg.version} promoted to production: a new reference starts")
