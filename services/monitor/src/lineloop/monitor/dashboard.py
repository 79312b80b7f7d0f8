"""The monitor's dashboard: a read-only web page served by the monitor process itself (aiohttp on
the same event loop, `http_port` on `bind_host`), so the embedded stack needs nothing more.

  GET /                       the page (static: dashboard/index.html, .js, .css)
  GET /static/plotly.min.js   the charting library, from the `plotly` package (no CDN: factory
                              networks have no internet)
  GET /api/dashboard          everything the page draws, as JSON, read through state.py

Auth: with LINELOOP_AUTH_MODE=required, /api/ answers only to `Authorization: Bearer <JWT>`
checked by the gRPC side's own TokenVerifier, with a role that may call
MonitorService.GetModelHealth (the page keeps the token the user gives it for the session). The
page and the library hold no data and stay open. Client certificates are not accepted here.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from datetime import datetime, timedelta
from importlib import resources

from aiohttp import web
from google.protobuf import json_format

from lineloop.contracts.access import allowed_roles
from lineloop.monitor import state
from lineloop.monitor.alerts import CAMERA_KINDS, kind_name
from lineloop.monitor.settings import MonitorSettings
from lineloop.runtime.auth import TokenVerifier, Unauthenticated
from lineloop.storage.sql import Database, as_utc, utcnow
from lineloop.v1 import events_pb2

log = logging.getLogger(__name__)

# The page shows what GetModelHealth shows: the same roles may read it.
READ_METHOD = "/lineloop.v1.MonitorService/GetModelHealth"
CONFIDENCE_BINS = 20
RECENT_ALERTS = 50
TIMELINE_CHANGES = 200
Z_95 = 1.959964
STATIC = resources.files("lineloop.monitor") / "dashboard"
PLOTLY_JS = resources.files("plotly") / "package_data" / "plotly.min.js"
# Only this origin's scripts; Plotly sets inline styles and draws images from data: URLs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at small n and near 0 or 1, unlike p +- z*se."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _iso(ts: datetime | None) -> str | None:
    return as_utc(ts).isoformat() if ts is not None else None


def _line_state(line, settings: MonitorSettings, now: datetime) -> str:
    if line.drift_until is not None and as_utc(line.drift_until) > now:
        return "drifting"
    if line.scoring_outage_since is not None:
        return "scoring outage"
    if line.frames_seen < line.reference_from_seq - 1 + settings.reference_frames + settings.current_frames:
        return "filling windows"
    return "ok"


def snapshot(db: Database, settings: MonitorSettings) -> dict:
    """Everything the page draws, as JSON-ready data."""
    now = utcnow()
    since = now - timedelta(seconds=settings.dashboard_history_s)
    with db.session() as s:
        lines = state.all_lines(s)
        # Frames of the history window only: the page refreshes every few seconds, and a scan of
        # every retained frame (days of them) each time would load the database for nothing.
        cameras = state.camera_activity(s, since)
        scores = state.scores_since(s, since)
        outcomes = state.version_outcomes(s, since)
        classes = state.class_counts(s, since)
        confidences = state.confidence_counts(s, since, CONFIDENCE_BINS)
        throughput = state.frames_per_bucket(s, since, settings.dashboard_bucket_s)
        refusals = state.all_rejection_counts(s)
        alerts = state.drift_reports_recent(s, RECENT_ALERTS)
        camera_alerts = state.active_alerts(s, kinds=CAMERA_KINDS)
        changes = state.model_changes_recent(s, TIMELINE_CHANGES)

    score_series: dict[str, dict[str, dict[str, list]]] = defaultdict(dict)
    for r in scores:
        series = score_series[r.line_id].setdefault(r.feature, {"at": [], "score": [], "threshold": []})
        series["at"].append(_iso(r.evaluated_at))
        series["score"].append(r.score)
        series["threshold"].append(r.threshold)

    versions = []
    for r in outcomes:
        low, high = wilson_interval(r.correct, r.labelled)
        versions.append({
            "line_id": r.line_id, "model_version": r.model_version, "role": "canary" if r.canary else "production",
            "frames": r.frames, "labelled": r.labelled,
            "accuracy": r.correct / r.labelled if r.labelled else None,
            "accuracy_low": low if r.labelled else None, "accuracy_high": high if r.labelled else None,
            "mean_confidence": r.mean_confidence,
        })
    class_shares: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for r in classes:
        class_shares[r.line_id][r.model_version][r.predicted_class] = r.frames
    histograms: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for r in confidences:
        histograms[r.line_id].setdefault(r.model_version, [0] * CONFIDENCE_BINS)[int(r.bin)] += r.frames
    frames_per_bucket: dict[str, dict[str, list]] = defaultdict(lambda: {"at": [], "frames": []})
    for r in throughput:
        frames_per_bucket[r.line_id]["at"].append(datetime.fromtimestamp(int(r.bucket), now.tzinfo).isoformat())
        frames_per_bucket[r.line_id]["frames"].append(r.frames)
    rejected: dict[str, dict[str, int]] = defaultdict(dict)
    for r in refusals:
        rejected[r.line_id][r.reason.removeprefix("REJECT_REASON_").lower()] = r.count

    quiet_before = now - timedelta(seconds=settings.dashboard_camera_quiet_s)
    return {
        "generated_at": now.isoformat(),
        "settings": {"psi_threshold": settings.psi_threshold, "min_live_accuracy": settings.min_live_accuracy,
                     "max_unscored_share": settings.max_unscored_share, "bucket_s": settings.dashboard_bucket_s,
                     "history_s": settings.dashboard_history_s, "confidence_bins": CONFIDENCE_BINS},
        "lines": [{
            "line_id": line.line_id, "model_name": line.model_name, "state": _line_state(line, settings, now),
            "frames_seen": line.frames_seen, "frames_unscored": line.frames_unscored,
            "frames_rejected": sum(rejected.get(line.line_id, {}).values()),
            "drift_until": _iso(line.drift_until), "scoring_outage_since": _iso(line.scoring_outage_since),
        } for line in lines],
        "cameras": [{
            "line_id": c.line_id, "camera_id": c.camera_id, "frames": c.frames, "unscored": c.unscored,
            "last_at": _iso(c.last_at), "state": "active" if as_utc(c.last_at) >= quiet_before else "quiet",
        } for c in cameras],
        "drift_scores": score_series,
        "versions": versions,
        "class_shares": class_shares,
        "confidence_histograms": histograms,
        "throughput": frames_per_bucket,
        "refusals": rejected,
        "alerts": [{
            "line_id": a.line_id, "detected_at": _iso(a.detected_at),
            "kind": events_pb2.DriftKind.Name(a.kind).removeprefix("DRIFT_KIND_").lower(),
            "feature": a.feature, "score": a.score, "threshold": a.threshold,
        } for a in alerts] + [{
            "line_id": line.line_id, "detected_at": _iso(line.scoring_outage_since), "kind": "scoring outage",
            "feature": "unscored_share", "score": None, "threshold": settings.max_unscored_share,
        } for line in lines if line.scoring_outage_since is not None] + [{
            # Active alerts of single cameras (drift against its own reference, silent, refused).
            "line_id": a.line_id, "camera_id": a.camera_id, "detected_at": _iso(a.raised_at),
            "kind": kind_name(a.kind).replace("_", " "), "feature": event.feature, "score": event.score,
            "threshold": event.threshold,
        } for a in camera_alerts for event in [json_format.Parse(a.raised_event, events_pb2.Alert())]],
        "model_changes": [{
            "model_name": c.model_name, "version": c.version, "stage": c.stage, "previous_stage": c.previous_stage,
            "kind": _change_kind(c.stage, c.reason), "at": _iso(c.changed_at), "actor": c.actor, "reason": c.reason,
            "lines": c.lines,
        } for c in changes],
    }


def _change_kind(stage: str, reason: str) -> str:
    if stage == "production":
        # The registry's rollback publishes production with this reason (registry/stages.py).
        return "rollback" if reason.startswith("rollback") else "promotion"
    return {"staging": "canary"}.get(stage, stage)


class Dashboard:
    """The HTTP side of the monitor, started and stopped with the service."""

    def __init__(self, db: Database, settings: MonitorSettings) -> None:
        self._db = db
        self._settings = settings
        security = settings.security
        self._auth_required = security.auth_mode == "required"
        self._verifier = TokenVerifier.from_settings(security) if self._auth_required and security.jwt else None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._auth])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/dashboard.js", self._file("dashboard.js", "text/javascript"))
        app.router.add_get("/static/dashboard.css", self._file("dashboard.css", "text/css"))
        app.router.add_get("/static/plotly.min.js", self._plotly)
        app.router.add_get("/api/dashboard", self._snapshot)
        return app

    async def start(self) -> None:
        s = self._settings
        if s.http_port is None:
            return
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.bind_host, s.http_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("monitor dashboard on http://%s:%d/%s", s.bind_host, self.port,
                 " (bearer token required)" if self._auth_required else "")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- handlers -------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=(STATIC / "index.html").read_text(), content_type="text/html")

    def _file(self, name: str, content_type: str):
        async def serve(request: web.Request) -> web.Response:
            return web.Response(text=(STATIC / name).read_text(), content_type=content_type)
        return serve

    async def _plotly(self, request: web.Request) -> web.Response:
        return web.Response(body=PLOTLY_JS.read_bytes(), content_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    async def _snapshot(self, request: web.Request) -> web.Response:
        # In a thread: the handlers of frames share this event loop and must not wait on the page.
        return web.json_response(await asyncio.to_thread(snapshot, self._db, self._settings))

    # ---- middlewares ----------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler):
        response = await handler(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if not self._auth_required or not request.path.startswith("/api/"):
            return await handler(request)
        try:
            if self._verifier is None:
                raise Unauthenticated("TOKENS_NOT_ACCEPTED", "this monitor accepts no bearer tokens (no issuer "
                                      "configured) and the dashboard takes no client certificates")
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("NO_CREDENTIALS", "send `Authorization: Bearer <JWT>` (open the page as "
                                      "/#token=<JWT> and it sends it)")
            identity = self._verifier.verify(token.strip())
        except Unauthenticated as err:
            return web.json_response({"reason": err.reason, "message": str(err)}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        allowed = allowed_roles(READ_METHOD)
        if not identity.roles & set(allowed):
            return web.json_response({"reason": "ROLE_NOT_ALLOWED", "message": (
                f"{identity.name} (roles: {', '.join(sorted(identity.roles)) or 'none'}) may not read the dashboard; "
                f"roles that may: {', '.join(allowed)}")}, status=403)
        return await handler(request)
