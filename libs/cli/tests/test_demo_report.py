"""The demo's figures and report, from facts given by hand (no stack)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from lineloop.cli.demo_report import (
    LabelledFrame,
    Measurement,
    PhaseAccuracy,
    TimelineEvent,
    last_line,
    phase_accuracy,
    target_rows,
    write_report,
)

T0 = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)


def frame(i: int, drifted: bool, version: str, predicted: str, label: str) -> LabelledFrame:
    return LabelledFrame(f"f{i}", drifted, version, predicted, label)


def test_phase_accuracy_splits_frames_by_drift_and_serving_version():
    frames = [
        frame(1, False, "1", "ok", "ok"),
        frame(2, False, "1", "ok", "rot"),        # before: 1 of 2
        frame(3, True, "1", "ok", "bruise"),
        frame(4, True, "1", "ok", "scab"),
        frame(5, True, "1", "rot", "rot"),        # during: 1 of 3
        frame(6, True, "2", "bruise", "bruise"),  # after: 1 of 1
        frame(7, False, "2", "ok", "rot"),        # undrifted under the new model: no phase
        frame(8, True, "", "", "ok"),             # no prediction: no phase
        frame(9, True, "3", "ok", "ok"),          # another version: no phase
    ]
    acc = phase_accuracy(frames, "1", "2")
    assert acc == {"before": PhaseAccuracy(1, 2), "during": PhaseAccuracy(1, 3), "after": PhaseAccuracy(1, 1)}


def test_a_phase_without_labelled_frames_is_none_not_zero():
    acc = phase_accuracy([frame(1, False, "1", "ok", "ok")], "1", "2")
    assert acc["before"] == PhaseAccuracy(1, 1)
    assert acc["during"] is None and acc["after"] is None


def test_last_line_gives_every_figure_and_n_a_for_what_was_not_measured():
    m = Measurement(onset=T0, detected=T0 + timedelta(seconds=41.6), promoted=T0 + timedelta(seconds=250.2),
                    accuracy={"before": PhaseAccuracy(57, 60), "during": PhaseAccuracy(30, 60), "after": None},
                    versions_registered=2)
    assert last_line(m, "/s/demo-report/index.html") == (
        "demo: detect=42s recover=250s accuracy=0.950/0.500/n/a versions=2 report=/s/demo-report/index.html")
    unmeasured = Measurement()
    assert last_line(unmeasured, "r.html") == "demo: detect=n/a recover=n/a accuracy=n/a/n/a/n/a versions=n/a report=r.html"


def test_targets_are_judged_not_enforced():
    m = Measurement(onset=T0, detected=T0 + timedelta(seconds=61), promoted=T0 + timedelta(seconds=300),
                    accuracy={"before": PhaseAccuracy(95, 100), "during": PhaseAccuracy(50, 100),
                              "after": PhaseAccuracy(92, 100)})
    rows = {name: (value, met) for name, value, _, met in target_rows(m)}
    assert rows["detect"] == ("61s", "no")
    assert rows["recover"] == ("300s", "yes")
    assert rows["accuracy after vs before"] == ("-3.0 points", "no")


def test_wilson_interval_contains_the_estimate_and_narrows_with_more_frames():
    small, large = PhaseAccuracy(9, 10), PhaseAccuracy(900, 1000)
    lo, hi = small.wilson95()
    assert lo < 0.9 < hi <= 1.0
    lo2, hi2 = large.wilson95()
    assert hi2 - lo2 < hi - lo


def test_report_is_written_with_its_charts_and_facts(tmp_path):
    m = Measurement(onset=T0, onset_source="captured_at of the first drifted frame", detected=T0 + timedelta(seconds=30),
                    promoted=T0 + timedelta(seconds=200), old_version="1", new_version="2",
                    accuracy={"before": PhaseAccuracy(50, 60), "during": PhaseAccuracy(20, 60), "after": None},
                    versions_registered=2,
                    events=[TimelineEvent(T0 + timedelta(seconds=200), "stage", "v2 -> production (release-manager)"),
                            TimelineEvent(T0 - timedelta(seconds=100), "step", "1/8 Stack <and> services")],
                    drift_features=[{"feature": "brightness_mean", "score": 0.9, "threshold": 0.2, "drifted": True}],
                    health=[{"version": "1", "frames_scored": 500, "frames_labelled": 120, "live_accuracy": 0.7},
                            {"version": "2", "frames_scored": 10, "frames_labelled": 0, "live_accuracy": 0.0}],
                    notes=["accuracy after: n/a, no human-labelled frame of this phase"])
    index = write_report(tmp_path / "demo-report", m)
    assert index == tmp_path / "demo-report" / "index.html"
    page = index.read_text()
    assert (tmp_path / "demo-report" / "plotly.min.js").stat().st_size > 100_000  # opens offline
    assert last_line(m, index) in page
    assert "1/8 Stack &lt;and&gt; services" in page  # escaped
    assert page.index("1/8 Stack") < page.index("v2 -&gt; production")  # timeline in time order
    assert "accuracy after: n/a" in page and "no trace id" in page
    facts = json.loads((tmp_path / "demo-report" / "measurement.json").read_text())
    assert facts["detect_s"] == 30 and facts["recover_s"] == 200
    assert facts["accuracy"]["after"] is None and facts["accuracy"]["before"]["correct"] == 50
    assert [e["kind"] for e in facts["events"]] == ["step", "stage"]
