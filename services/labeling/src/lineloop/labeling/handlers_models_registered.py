"""models.registered.v1 -> when the gate lacked labelled test frames to decide, ask for them.

A candidate the gate could not decide (NOT_ENOUGH_EVIDENCE) is held until labels decide it. Each
undecided check names the class whose test frames it lacked and roughly how many more would
decide; the queue puts such frames first and the cut policy cuts the next dataset version once
they are labelled (see datasets.Datasets.apply_policy). A decided candidate (passed or failed)
settles the dataset's request.
"""

from __future__ import annotations

from datetime import UTC

from lineloop.bus import EventContext, Reject
from lineloop.labeling import labels, state
from lineloop.v1.events_pb2 import GateOutcome, ModelRegistered


def wanted_of(msg: ModelRegistered) -> dict[str, int]:
    """{class ("" = any): labelled test frames still needed} of the undecided checks (at least 1 each)."""
    wanted: dict[str, int] = {}
    for check in msg.gate.checks:
        if check.outcome == GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE:
            wanted[check.lacking_class] = max(wanted.get(check.lacking_class, 0), check.more_frames_needed, 1)
    return wanted


async def on_model_registered(msg: ModelRegistered, ctx: EventContext) -> None:
    if not msg.dataset or not msg.model_name:
        raise Reject("invalid_model", f"model {msg.model_name!r} v{msg.version} lacks its dataset or name")
    s = ctx.session
    registered_at = msg.registered_at.ToDatetime(tzinfo=UTC) if msg.HasField("registered_at") else labels.utcnow()
    if msg.gate.outcome != GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE:
        state.evidence_settled(s, msg.dataset, registered_at)
        return
    head = state.head(s, msg.dataset)
    state.want_evidence(s, msg.dataset, head.line_id if head else msg.dataset, msg.model_name, msg.version,
                        registered_at, wanted_of(msg), labels.utcnow())
