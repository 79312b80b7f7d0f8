"""Every service's handler for every event it consumes, on generated messages, against a
real SQLite database and the session's object store, applied the way the bus applies a
decoded record (inbox, handler, one transaction).

Outcome per case: applied, or `Reject` with a reason (it goes to the DLQ). Any other
exception is a finding: the bus would retry it and dead-letter it as a bare
`handler_error`, or, worse, retry it forever as an outage.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import strategies as st
from lineloop.contracts.catalogue import CATALOGUE
from lineloop.contracts.topics import BY_TOPIC
from lineloop.v1.common_pb2 import ObjectRef, Prediction, PredictionSource, PredictionStatus
from lineloop.v1.events_pb2 import FrameIngested
from lineloop.vision import AppleRenderer, encode_jpeg
from tests.fuzz.harness import run_cases_async
from tests.fuzz.services import hosted
from tests.fuzz.strategies import messages

# Every (service, topic) the catalogue says is consumed; the test below checks each service wires
# exactly those, so a new handler is fuzzed as soon as it is declared.
CONSUMED = [(name, topic) for name, entry in CATALOGUE.services.items() for topic in entry.consumes]
JPEG = encode_jpeg(AppleRenderer(32, seed=1).render(0).image)
OVERRIDES = {
    # Some frames carry a real image, so cases get past the first check into decode, store and index.
    "lineloop.v1.FrameCaptured.inline_image": lambda: st.one_of(st.just(JPEG), st.binary(max_size=64)),
}


def plausible_frame(line: str) -> FrameIngested:
    """A frames.ingested.v1 as ingest publishes it: what every consumer must still apply after the fuzz."""
    frame_id = f"f-{uuid.uuid4().hex[:12]}"
    sha = hashlib.sha256(frame_id.encode()).hexdigest()
    msg = FrameIngested(
        frame_id=frame_id, line_id=line, camera_id="cam-1", gateway_id="gw-1",
        image=ObjectRef(bucket="lineloop-frames", key=f"{sha[:2]}/{sha}.jpg", sha256=sha, size_bytes=1234),
        content_type="image/jpeg", width=64, height=64,
        prediction=Prediction(status=PredictionStatus.PREDICTION_STATUS_OK, source=PredictionSource.PREDICTION_SOURCE_CLOUD,
                              model_name="apples", model_version="1", predicted_class="ok",
                              scores={"ok": 0.9, "bruise": 0.1}),
    )
    msg.captured_at.FromDatetime(datetime.now(UTC))
    msg.ingested_at.FromDatetime(datetime.now(UTC))
    return msg


async def test_handler_list_matches_the_services(stack, tmp_path):
    """CONSUMED is every handler main.build() wires: a new one must be fuzzed too."""
    wired = set()
    for name in sorted({service for service, _ in CONSUMED}):
        async with hosted(name, stack, tmp_path / name) as host:
            wired |= {(name, topic) for topic in host.registrations}
    assert wired == set(CONSUMED)


@pytest.mark.parametrize(("service", "topic"), CONSUMED, ids=[f"{s}:{t}" for s, t in CONSUMED])
async def test_handler_applies_or_rejects_with_a_reason(service, topic, stack, tmp_path):
    et = BY_TOPIC[topic]
    async with hosted(service, stack, tmp_path) as host:
        async def check(msg) -> str:
            return await host.deliver(topic, msg)

        await run_cases_async(f"handler:{service}:{topic}", messages(et.message.DESCRIPTOR, overrides=OVERRIDES), check)

        # Valid traffic behind the fuzz is unaffected: a frame as ingest publishes it is applied.
        if topic == "frames.ingested.v1":
            good = plausible_frame(f"line-{uuid.uuid4().hex[:6]}")
            assert await host.deliver(topic, good) == "applied"


async def test_a_promotion_listing_a_line_twice_is_rejected_with_its_reason(stack, tmp_path):
    """Found by this fuzz: ingest's deployments index raised IntegrityError (retried, then a bare handler_error)."""
    from lineloop.v1.events_pb2 import ModelPromoted

    twice = ModelPromoted(model_name="apples", version="2")
    for _ in range(2):
        twice.deployments.add(line_id="line-1", production_version="2")
    async with hosted("ingest", stack, tmp_path) as host:
        assert await host.deliver("models.promoted.v1", twice) == "rejected:invalid_event"


async def test_a_promotion_with_a_share_outside_0_to_1_is_rejected_with_its_reason(stack, tmp_path):
    """Found by this fuzz: a NaN canary_share hit ingest's NOT NULL column (decode now refuses NaN; 2.0 is the handler's)."""
    from lineloop.v1.events_pb2 import ModelPromoted

    async with hosted("ingest", stack, tmp_path) as host:
        for share, reason in ((float("nan"), "invalid_field"), (2.0, "invalid_event"), (float("-inf"), "invalid_event")):
            msg = ModelPromoted(model_name="apples", version="2")
            msg.deployments.add(line_id="line-1", production_version="1", canary_version="2", canary_share=share)
            assert await host.deliver("models.promoted.v1", msg) == f"rejected:{reason}", share
