"""Which label sources are ground truth, read from the `(ground_truth)` option on the
LabelSource values in proto/lineloop/v1/events.proto: labeling (test splits, the review queue)
and the monitor (live accuracy) both ask here."""

from __future__ import annotations

from lineloop.v1 import events_pb2, options_pb2

GROUND_TRUTH_SOURCES: tuple[int, ...] = tuple(
    value.number for value in events_pb2.LabelSource.DESCRIPTOR.values
    if value.GetOptions().Extensions[options_pb2.ground_truth]
)
# Short names, for manifests, exports and `--json` output.
SOURCE_NAMES: dict[int, str] = {
    value.number: value.name.removeprefix("LABEL_SOURCE_").lower()
    for value in events_pb2.LabelSource.DESCRIPTOR.values if value.number
}
