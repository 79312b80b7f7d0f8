"""The monitor's dashboard, fed by a real run (events on the test session's broker, read by a real
monitor) and loaded in headless Chromium (Debian's `chromium`, installed by
deploy/local/system-deps.sh): no console error, the lines and versions on the page, every chart
drawn, and a screenshot kept as a test artefact."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from lineloop.bus import Bus
from lineloop.monitor.dashboard import Dashboard, wilson_interval
from lineloop.monitor.settings import MonitorSettings
from lineloop.monitor import state
from lineloop.runtime.pki import ec_key, jwks_json, mint_token
from lineloop.runtime.settings import SecuritySettings
from lineloop.storage.sql import Database
from lineloop.v1 import common_pb2, events_pb2

CHARTS = ("drift", "accuracy", "timeline", "classes", "confidence", "throughput", "refusals")


def artefact_dir() -> Path:
    """Where screenshots are kept: $LINELOOP_TEST_ARTIFACTS, else test-artifacts/ in the state dir (git-ignored)."""
    default = Path(os.environ.get("LINELOOP_STATE_DIR", ".lineloop")) / "test-artifacts"
    folder = Path(os.environ.get("LINELOOP_TEST_ARTIFACTS", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        why = "the dashboard test needs Debian's `chromium`; deploy/local/system-deps.sh installs it as root with apt-get"
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(f"{why}, and could have here: run it (`bash deploy/local/system-deps.sh`)")
        pytest.skip(f"{why}; this is not root with apt-get, so it could not")
    return path


def frame(line: str, i: int, rng: np.random.Generator, *, version: str, canary: bool,
          sharpness: float) -> events_pb2.FrameIngested:
    msg = events_pb2.FrameIngested(frame_id=f"{line}-{i}", line_id=line, camera_id=f"{line}-cam-{i % 2}")
    msg.ingested_at.GetCurrentTime()
    q = msg.quality
    q.brightness_mean, q.brightness_std, q.contrast = rng.normal(120, 5), rng.normal(40, 2), rng.normal(0.3, 0.02)
    q.sharpness = rng.normal(sharpness, sharpness * 0.1)
    q.mean_r, q.mean_g, q.mean_b = rng.normal(150, 5), rng.normal(90, 5), rng.normal(60, 5)
    p = msg.prediction
    p.status, p.model_name, p.model_version, p.canary = common_pb2.PREDICTION_STATUS_OK, "apples", version, canary
    confidence = float(rng.uniform(0.55, 0.99))
    p.predicted_class = "rot" if i % 4 == 0 else "ok"
    p.scores[p.predicted_class], p.scores["ok" if p.predicted_class == "rot" else "rot"] = confidence, 1 - confidence
    return msg


def promoted(version: str, stage: int, previous: int, deployments: list[events_pb2.LineDeployment],
             reason: str) -> events_pb2.ModelPromoted:
    msg = events_pb2.ModelPromoted(model_name="apples", version=version, stage=stage, previous_stage=previous,
                                   actor="test/release-manager", reason=reason, deployments=deployments)
    msg.promoted_at.GetCurrentTime()
    return msg


async def poll(url: str, ready, timeout: float = 60.0) -> dict:
    """GET `url` until `ready(json)`; the last answer is returned either way (the asserts say what is missing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(url) as response:
                assert response.status == 200, await response.text()
                data = await response.json()
            if ready(data) or asyncio.get_running_loop().time() > deadline:
                return data
            await asyncio.sleep(0.3)


async def test_the_dashboard_shows_a_real_run_in_headless_chromium(stack, monitor, publish_in_order):
    chromium = chromium_path()
    from playwright.async_api import async_playwright

    drifting, steady = f"line-{uuid.uuid4().hex[:6]}", f"line-{uuid.uuid4().hex[:6]}"
    base = f"http://127.0.0.1:{monitor.dashboard.port}"
    rng = np.random.default_rng(7)
    producer = Bus(stack.kafka_bootstrap, source="test/ingest")
    await producer.start()
    try:
        # v1 in production on both lines, then v2 as a canary on one: before any frame, so the
        # lines' reference windows start with the first frames below.
        await producer.publish(promoted("1", common_pb2.STAGE_PRODUCTION, common_pb2.STAGE_STAGING, [
            events_pb2.LineDeployment(line_id=drifting, production_version="1"),
            events_pb2.LineDeployment(line_id=steady, production_version="1")], "passed the gate"))
        await producer.publish(promoted("2", common_pb2.STAGE_STAGING, common_pb2.STAGE_CANDIDATE, [
            events_pb2.LineDeployment(line_id=drifting, production_version="1", canary_version="2", canary_share=0.2)],
            "canary at 20%"))
        await poll(f"{base}/api/dashboard", lambda d: len(d["model_changes"]) == 2)
        # 150 clean frames (reference 100, current 50), then the lens gets dirty (batches of 30: 150 = 5 x 30)
        await publish_in_order(producer, [
            frame(drifting, i, rng, version="2" if i % 5 == 0 else "1", canary=i % 5 == 0,
                  sharpness=900.0 if i < 150 else 150.0) for i in range(210)], batch=30)
        await publish_in_order(producer, [frame(steady, i, rng, version="1", canary=False, sharpness=900.0)
                                          for i in range(40)])
        for i in range(40):  # the model said "rot" on every 4th frame; humans disagree on frames 1 and 2 of 8
            label = ("rot" if i % 4 == 0 else "ok") if i % 8 not in (1, 2) else "rot"
            await producer.publish(events_pb2.LabelCreated(frame_id=f"{drifting}-{i}", line_id=drifting,
                                                           label_class=label, source=events_pb2.LABEL_SOURCE_HUMAN))
        for i in range(3):
            await producer.publish(events_pb2.FrameRejected(frame_id=f"{drifting}-bad-{i}", line_id=drifting,
                                                            camera_id=f"{drifting}-cam-0",
                                                            reason=events_pb2.REJECT_REASON_UNDECODABLE_IMAGE))
    finally:
        await producer.stop()

    def complete(d: dict) -> bool:
        lines = {line["line_id"]: line for line in d["lines"]}
        return (lines.get(drifting, {}).get("frames_seen") == 210 and lines.get(steady, {}).get("frames_seen") == 40
                and any(a["line_id"] == drifting for a in d["alerts"])
                and sum(v["labelled"] for v in d["versions"] if v["line_id"] == drifting) == 40
                and d["refusals"].get(drifting, {}).get("undecodable_image") == 3)

    data = await poll(f"{base}/api/dashboard", complete)
    assert complete(data), data
    states = {line["line_id"]: line["state"] for line in data["lines"]}
    assert states == {drifting: "drifting", steady: "filling windows"}
    alert = next(a for a in data["alerts"] if a["line_id"] == drifting)
    assert alert["feature"] == "sharpness" and alert["score"] > alert["threshold"]
    assert {(v["line_id"], v["model_version"], v["role"]) for v in data["versions"]} == {
        (drifting, "1", "production"), (drifting, "2", "canary"), (steady, "1", "production")}
    assert [(c["kind"], c["version"]) for c in data["model_changes"]] == [("promotion", "1"), ("canary", "2")]
    sharpness = data["drift_scores"][drifting]["sharpness"]
    assert max(sharpness["score"]) > sharpness["threshold"][-1] and len(sharpness["at"]) >= 5
    assert sum(sum(h) for h in data["confidence_histograms"][drifting].values()) == 210
    assert sum(data["throughput"][steady]["frames"]) == 40
    assert {c["camera_id"] for c in data["cameras"] if c["line_id"] == drifting} == {f"{drifting}-cam-0", f"{drifting}-cam-1"}

    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
            page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
            await page.goto(base + "/", wait_until="load")
            # Drawn, then refreshed by itself. Polled from here: the page's CSP (no eval) also
            # refuses Playwright's wait_for_function, and the CSP is part of what is tested.
            deadline = asyncio.get_running_loop().time() + 20
            while await page.evaluate("Number(document.body.dataset.renders || 0)") < 2:
                assert asyncio.get_running_loop().time() < deadline, f"the page did not refresh twice: {problems}"
                await asyncio.sleep(0.2)
            text = await page.inner_text("body")
            for chart in CHARTS:  # Plotly drew each (an SVG with its traces), not a table of numbers
                traces = await page.locator(f"#chart-{chart} .main-svg .trace").count()
                assert traces > 0, f"chart {chart} has no trace"
            screenshot = artefact_dir() / "monitor-dashboard.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            seen = list(problems)  # before closing: closing may abort a refresh in flight
        finally:
            await browser.close()
    print(f"dashboard screenshot: {screenshot.resolve()}")
    assert seen == []
    for expected in (drifting, steady, "drifting", "filling windows", "v1", "v2", "canary", "production", "sharpness",
                     f"{drifting}-cam-1"):
        assert expected in text, f"{expected!r} not on the page"
    assert screenshot.stat().st_size > 20_000  # a drawn page, not a blank one


def test_the_wilson_interval_holds_the_estimate_and_narrows_with_labels():
    low, high = wilson_interval(8, 10)
    assert low < 0.8 < high and 0.0 <= low and high <= 1.0
    assert wilson_interval(80, 100)[1] - wilson_interval(80, 100)[0] < high - low
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] > 0.6


async def test_http_port_off_serves_no_page(tmp_path):
    settings = MonitorSettings(http_port="off", database_url=f"sqlite:///{tmp_path / 'monitor.db'}")
    assert settings.http_port is None
    dashboard = Dashboard(Database(settings.sql_url), settings)
    await dashboard.start()
    assert dashboard.port is None
    await dashboard.stop()


async def test_with_auth_required_the_data_needs_a_token_a_reader_may_use(tmp_path):
    key = ec_key()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(jwks_json({"k1": key.public_key()}))
    security = SecuritySettings(auth_mode="required", auth_issuer="lineloop-test", auth_audience="lineloop",
                                auth_jwks_file=jwks)
    settings = MonitorSettings(http_port=0, metrics_port=None, security=security,
                               database_url=f"sqlite:///{tmp_path / 'monitor.db'}")
    db = Database(settings.sql_url)
    db.migrate("lineloop.monitor", state.SCHEMA_VERSION, state.metadata)
    dashboard = Dashboard(db, settings)
    await dashboard.start()

    def token(roles: tuple[str, ...]) -> str:
        return mint_token(key, issuer="lineloop-test", audience="lineloop", subject="tester", roles=roles, kid="k1")

    try:
        url = f"http://127.0.0.1:{dashboard.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/") as page:  # the page holds no data: open
                assert page.status == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
            async with http.get(url + "/api/dashboard") as none:
                assert none.status == 401 and (await none.json())["reason"] == "NO_CREDENTIALS"
            async with http.get(url + "/api/dashboard", headers={"Authorization": "Bearer not-a-jwt"}) as bad:
                assert bad.status == 401 and (await bad.json())["reason"] == "TOKEN_MALFORMED"
            async with http.get(url + "/api/dashboard", headers={"Authorization": f"Bearer {token(('gateway',))}"}) as gw:
                assert gw.status == 403 and (await gw.json())["reason"] == "ROLE_NOT_ALLOWED"
            async with http.get(url + "/api/dashboard", headers={"Authorization": f"Bearer {token(('ml-engineer',))}"}) as ok:
                assert ok.status == 200 and (await ok.json())["lines"] == []
    finally:
        await dashboard.stop()
        db.dispose()
