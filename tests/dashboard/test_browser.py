"""A real browser against a real server: `streamlit run` on 127.0.0.1, headless Chromium driven through the
DevTools protocol, one user scored, the probability and its explanation read back from the page.

The screenshot is kept at artifacts/dashboard/score-a-user.png (gitignored) for people to look at.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import APP, ROOT, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SCREENSHOT = ROOT / "artifacts" / "dashboard" / "score-a-user.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,2600"]


def chromium_binary() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("Chromium is not installed: apt-get install -y chromium (.ci/run installs it)")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll ``predicate`` until it returns a truthy value; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - the server or browser may still be starting
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class DevTools:
    """Minimal Chrome DevTools Protocol client over one page target's websocket."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture()
def dashboard_server(churn_store, dash_db, tmp_path):
    """`streamlit run dashboard/app.py` on a free 127.0.0.1 port against the session's champion."""
    from kpi.dashboard.serve import streamlit_command
    from kpi.db import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPI_") and k != "MLFLOW_TRACKING_URI"}
    env.update(churn_store["env"], KPI_ENV="test", KPI_DATABASE_URL=dash_db)
    log = (tmp_path / "streamlit.log").open("w")
    cmd = streamlit_command(APP, "127.0.0.1", port) + ["--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok", 120,
                 "the Streamlit server's health endpoint")
        yield url
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture()
def browser():
    """Headless Chromium with a fresh profile; yields a DevTools client on its first page."""
    binary = chromium_binary()
    profile = Path(tempfile.mkdtemp(prefix="kpi-chromium-"))
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        port = wait_for(lambda: port_file.exists() and port_file.read_text().split()[0], 60,
                        "Chromium's DevTools port")
        targets = wait_for(lambda: [t for t in json.load(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/json/list", timeout=5)) if t["type"] == "page"], 30, "a page target")
        client = DevTools(targets[0]["webSocketDebuggerUrl"])
        yield client
        client.close()
    finally:
        stop_process(proc)
        shutil.rmtree(profile, ignore_errors=True)


def test_a_person_scores_one_user_in_a_real_browser(dashboard_server, browser, churn_store):
    from kpi.churn.registry import load_champion
    from kpi.dashboard.scoring import form_fields, form_frame, score_one

    champ = load_champion(churn_store["settings"])
    fields = form_fields(champ.model.input_schema())
    expected = score_one(champ.model, form_frame(fields, {f.name: f.default for f in fields}))

    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{dashboard_server}/")  # "Score a user" is the default page
    submit = "document.querySelector('[data-testid=\"stFormSubmitButton\"] button')"
    wait_for(lambda: browser.evaluate(f"!!{submit}"), 120, "the scoring form's Score button")
    page = wait_for(lambda: (t := browser.evaluate("document.body.innerText")) and "Champion version" in t and t,
                    60, "the champion's version, AUC and training date")
    assert re.search(rf"Champion version\s*\n\s*{champ.version}\b", page), page[:1500]
    assert "Page not found" not in page
    browser.evaluate(f"{submit}.click()")

    label = "Probability of a payment in the next 60 days"
    text = wait_for(lambda: (t := browser.evaluate("document.body.innerText")) and label in t
                    and "Why: SHAP contributions" in t and t, 120, "the probability and its explanation")
    shown = re.search(re.escape(label) + r"\s*\n\s*([0-9.]+%)", text)
    assert shown, text[:2000]
    assert shown.group(1) == f"{expected:.1%}"
    # the explanation: a Plotly bar chart with one bar per feature, signed contributions
    bars = wait_for(lambda: browser.evaluate(
        "(() => { const p = document.querySelector('.js-plotly-plot'); "
        "return p && p.data ? p.data[0].x.length : 0 })()"), 60, "the SHAP bar chart")
    assert bars == len(champ.model.feature_names)

    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    assert SCREENSHOT.stat().st_size > 10_000
