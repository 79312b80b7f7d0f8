"""What `lineloop demo` measures about itself, its last line, and its HTML report.

The demo collects facts (times it read from the services, labels against predictions);
this module turns them into figures. It only computes and writes: no service calls here,
so the figures can be checked without a stack.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path

# Targets shown next to the figures (the demo does not fail on them).
TARGET_DETECT_S = 60.0
TARGET_RECOVER_S = 300.0
TARGET_ACCURACY_DROP = 0.02  # "after" within 2 points of "before"

PHASES = ("before", "during", "after")


@dataclass(frozen=True)
class LabelledFrame:
    """One frame the demo sent, with the human label it got and the prediction it was served."""

    frame_id: str
    drifted: bool          # sent by the simulator with drift switched on
    model_version: str     # the version whose prediction ingest stored with the frame ("" = none)
    predicted_class: str
    label_class: str       # the effective human (ground-truth) label


@dataclass(frozen=True)
class PhaseAccuracy:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    def wilson95(self) -> tuple[float, float]:
        """95 % Wilson interval: how far a sample of `total` frames pins the accuracy down."""
        z, n, p = 1.96, self.total, self.accuracy
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def phase_of(frame: LabelledFrame, old_version: str, new_version: str) -> str | None:
    """before: undrifted frames served by the old production model; during: drifted frames served by
    it; after: drifted frames served by the model trained on the drifted data. Anything else
    (no prediction, undrifted frames of the new model) belongs to no phase."""
    if frame.model_version == old_version and old_version:
        return "during" if frame.drifted else "before"
    if frame.model_version == new_version and new_version and frame.drifted:
        return "after"
    return None


def phase_accuracy(frames: list[LabelledFrame], old_version: str, new_version: str) -> dict[str, PhaseAccuracy | None]:
    """Per phase, human labels that agree with the served prediction; None where no frame was labelled."""
    counts = {phase: [0, 0] for phase in PHASES}
    for frame in frames:
        phase = phase_of(frame, old_version, new_version)
        if phase is None or not frame.label_class or not frame.predicted_class:
            continue
        counts[phase][1] += 1
        counts[phase][0] += frame.predicted_class == frame.label_class
    return {phase: PhaseAccuracy(c, n) if n else None for phase, (c, n) in counts.items()}


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    kind: str      # step, dataset, run, registered, stage, drift, measure
    what: str


@dataclass
class Measurement:
    """Everything the last line and the report say, with where each fact came from."""

    onset: datetime | None = None          # captured_at of the first drifted frame (ingest's record)
    onset_source: str = ""
    detected: datetime | None = None       # detected_at of the first drift.detected.v1 after onset
    promoted: datetime | None = None       # registry's history: the new version's move to production
    old_version: str = ""
    new_version: str = ""
    accuracy: dict[str, PhaseAccuracy | None] = field(default_factory=lambda: {p: None for p in PHASES})
    versions_registered: int | None = None
    events: list[TimelineEvent] = field(default_factory=list)
    drift_features: list[dict] = field(default_factory=list)   # GetDriftReport features at the end
    drift_events: list[dict] = field(default_factory=list)     # GetDriftReport recent
    health: list[dict] = field(default_factory=list)           # GetModelHealth versions at the end
    trace_id: str = ""
    notes: list[str] = field(default_factory=list)             # why a figure is n/a, and caveats

    @property
    def detect_s(self) -> float | None:
        return _seconds(self.onset, self.detected)

    @property
    def recover_s(self) -> float | None:
        return _seconds(self.onset, self.promoted)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def _fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}s"


def _fmt_acc(value: PhaseAccuracy | None) -> str:
    return "n/a" if value is None else f"{value.accuracy:.3f}"


def last_line(m: Measurement, report: Path | str) -> str:
    accuracy = "/".join(_fmt_acc(m.accuracy.get(p)) for p in PHASES)
    versions = "n/a" if m.versions_registered is None else str(m.versions_registered)
    return (f"demo: detect={_fmt_s(m.detect_s)} recover={_fmt_s(m.recover_s)} accuracy={accuracy} "
            f"versions={versions} report={report}")


def target_rows(m: Measurement) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, met) for the report; `met` is yes / no / n/a."""
    def met(ok: bool | None) -> str:
        return "n/a" if ok is None else ("yes" if ok else "no")

    before, after = m.accuracy.get("before"), m.accuracy.get("after")
    drop = None if before is None or after is None else before.accuracy - after.accuracy
    return [
        ("detect", _fmt_s(m.detect_s), f"<= {TARGET_DETECT_S:.0f}s",
         met(None if m.detect_s is None else m.detect_s <= TARGET_DETECT_S)),
        ("recover", _fmt_s(m.recover_s), f"<= {TARGET_RECOVER_S:.0f}s",
         met(None if m.recover_s is None else m.recover_s <= TARGET_RECOVER_S)),
        ("accuracy after vs before", "n/a" if drop is None else f"{-drop * 100:+.1f} points",
         f">= -{TARGET_ACCURACY_DROP * 100:.0f} points", met(None if drop is None else drop <= TARGET_ACCURACY_DROP)),
    ]


def _plotly_js() -> Path:
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


def _chart(div_id: str, traces: list[dict], layout: dict) -> str:
    return (f'<div id="{div_id}" class="chart"></div>\n<script>Plotly.newPlot({json.dumps(div_id)}, '
            f'{json.dumps(traces)}, {json.dumps(layout)}, {{"displayModeBar": false}});</script>')


def write_report(directory: Path, m: Measurement) -> Path:
    """index.html (plotly charts; plotly.min.js copied beside it, so it opens offline) and
    measurement.json with the same facts; returns index.html's path."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_plotly_js(), directory / "plotly.min.js")
    e = html.escape
    events = sorted(m.events, key=lambda ev: ev.at)
    origin = events[0].at if events else m.onset
    rows = "\n".join(
        f"<tr><td>{e(ev.at.isoformat(timespec='seconds'))}</td><td>{'' if origin is None else f'{(ev.at - origin).total_seconds():.0f}'}"
        f"</td><td>{e(ev.kind)}</td><td>{e(ev.what)}</td></tr>" for ev in events)
    kinds = sorted({ev.kind for ev in events})
    timeline = _chart("timeline", [
        {"type": "scatter", "mode": "markers", "name": kind, "x": [ev.at.isoformat() for ev in events if ev.kind == kind],
         "y": [kind] * sum(ev.kind == kind for ev in events), "text": [ev.what for ev in events if ev.kind == kind],
         "hoverinfo": "x+text", "marker": {"size": 12}} for kind in kinds
    ], {"title": "Timeline", "height": 320, "showlegend": False})
    drift = _chart("drift", [
        {"type": "bar", "name": "score", "x": [f["feature"] for f in m.drift_features], "y": [f["score"] for f in m.drift_features]},
        {"type": "scatter", "mode": "markers", "name": "threshold", "x": [f["feature"] for f in m.drift_features],
         "y": [f["threshold"] for f in m.drift_features], "marker": {"symbol": "line-ew-open", "size": 30}},
    ], {"title": "Drift scores at the end (GetDriftReport, PSI per feature)", "height": 360})
    phases = [p for p in PHASES if m.accuracy.get(p) is not None]
    intervals = [m.accuracy[p].wilson95() for p in phases]  # type: ignore[union-attr]
    accuracy = _chart("accuracy", [
        {"type": "bar", "name": "phase accuracy", "x": phases, "y": [m.accuracy[p].accuracy for p in phases],  # type: ignore[union-attr]
         "text": [f"{m.accuracy[p].correct}/{m.accuracy[p].total}" for p in phases],  # type: ignore[union-attr]
         "error_y": {"type": "data", "symmetric": False,
                     "array": [hi - m.accuracy[p].accuracy for p, (_, hi) in zip(phases, intervals)],  # type: ignore[union-attr]
                     "arrayminus": [m.accuracy[p].accuracy - lo for p, (lo, _) in zip(phases, intervals)]}},  # type: ignore[union-attr]
    ], {"title": "Accuracy on human-labelled frames per phase (95 % Wilson interval)", "height": 360,
        "yaxis": {"range": [0, 1]}})
    health_rows = "\n".join(
        f"<tr><td>{e(h['version'])}</td><td>{h['frames_scored']}</td><td>{h['frames_labelled']}</td>"
        f"<td>{h['live_accuracy']:.3f}</td></tr>" if h["frames_labelled"] else
        f"<tr><td>{e(h['version'])}</td><td>{h['frames_scored']}</td><td>0</td><td>-</td></tr>" for h in m.health)
    live = _chart("live", [
        {"type": "bar", "x": [h["version"] for h in m.health if h["frames_labelled"]],
         "y": [h["live_accuracy"] for h in m.health if h["frames_labelled"]],
         "text": [f"{h['frames_labelled']} labelled" for h in m.health if h["frames_labelled"]]},
    ], {"title": "Live accuracy per version (GetModelHealth: every labelled frame it served)", "height": 320,
        "yaxis": {"range": [0, 1]}})
    targets = "\n".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td><td>{e(d)}</td></tr>" for a, b, c, d in target_rows(m))
    accuracy_rows = "\n".join(
        f"<tr><td>{p}</td><td>{_fmt_acc(a)}</td><td>{'-' if a is None else f'{a.correct}/{a.total}'}</td>"
        f"<td>{'-' if a is None else '{:.3f} … {:.3f}'.format(*a.wilson95())}</td></tr>"
        for p, a in ((p, m.accuracy.get(p)) for p in PHASES))
    notes = "\n".join(f"<li>{e(n)}</li>" for n in m.notes) or "<li>none</li>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lineloop demo report</title>
<script src="plotly.min.js"></script>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}} .chart{{width:100%}}</style></head>
<body>
<h1>lineloop demo report</h1>
<p><code>{e(last_line(m, directory / "index.html"))}</code></p>
<h2>Figures and targets</h2>
<table><tr><th>figure</th><th>value</th><th>target</th><th>met</th></tr>{targets}</table>
<ul>
<li><b>detect</b>: drift onset = {e(m.onset_source or "unknown")}
 ({e(m.onset.isoformat() if m.onset else "n/a")}) to the <code>detected_at</code> of the first
 <code>drift.detected.v1</code> on or after it, as the monitor's GetDriftReport lists it
 ({e(m.detected.isoformat() if m.detected else "n/a")}).</li>
<li><b>recover</b>: the same onset to the registry's history entry that moved v{e(m.new_version or "?")}
 (trained on the dataset with the drifted frames) to production ({e(m.promoted.isoformat() if m.promoted else "n/a")}).</li>
<li><b>accuracy</b> before/during/after: frames the demo sent (the simulator's ledger), each with its effective
 human label (labeling's GetFrameLabels) compared with the prediction ingest stored with it:
 before = undrifted frames served by v{e(m.old_version or "?")}, during = drifted frames served by v{e(m.old_version or "?")},
 after = drifted frames served by v{e(m.new_version or "?")}.</li>
<li><b>versions</b>: model versions the registry registered during this run.</li>
</ul>
<h2>Accuracy per phase</h2>
<table><tr><th>phase</th><th>accuracy</th><th>correct/labelled</th><th>95 % interval</th></tr>{accuracy_rows}</table>
{accuracy}
<h2>Live accuracy per version (monitor)</h2>
<table><tr><th>version</th><th>frames scored</th><th>labelled</th><th>live accuracy</th></tr>{health_rows}</table>
{live}
<h2>Drift</h2>
{drift}
<h2>Timeline</h2>
{timeline}
<table><tr><th>at (UTC)</th><th>s from start</th><th>kind</th><th>what</th></tr>{rows}</table>
<h2>Trace</h2>
<p>{e(m.trace_id) if m.trace_id else "no trace id: the bus does not carry a traceparent header on frames.ingested.v1, so one frame cannot be followed across services from here."}</p>
<h2>Notes</h2>
<ul>{notes}</ul>
<p>Charts are drawn by plotly in the browser (no PNGs: neither matplotlib nor kaleido is installed, and the demo adds no dependency).</p>
</body></html>
"""
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    (directory / "measurement.json").write_text(json.dumps(_as_json(m), indent=2, default=str), encoding="utf-8")
    return index


def _as_json(m: Measurement) -> dict:
    return {
        "onset": m.onset, "onset_source": m.onset_source, "detected": m.detected, "promoted": m.promoted,
        "detect_s": m.detect_s, "recover_s": m.recover_s, "old_version": m.old_version, "new_version": m.new_version,
        "accuracy": {p: None if a is None else {"correct": a.correct, "total": a.total, "accuracy": a.accuracy}
                     for p, a in m.accuracy.items()},
        "versions_registered": m.versions_registered,
        "events": [{"at": ev.at, "kind": ev.kind, "what": ev.what} for ev in sorted(m.events, key=lambda ev: ev.at)],
        "drift_features": m.drift_features, "drift_events": m.drift_events, "health": m.health, "notes": m.notes,
    }
