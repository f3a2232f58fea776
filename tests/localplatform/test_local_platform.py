"""`task platform-up` then `task smoke TARGET=local`, for real: the chart's programs as processes (Postgres, an
S3 server, MLflow, Airflow 3's api-server, scheduler, dag-processor and triggerer, the dashboard, JupyterLab,
the scoring API), driven by the same smoke script as the kind workflow, then `task platform-down`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _kpi(*args: str, env: dict, timeout: float) -> dict:
    result = subprocess.run([str(Path(sys.executable).parent / "kpi"), *args], env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    lines = result.stdout.strip().splitlines()
    assert lines, f"kpi {' '.join(args)} printed nothing: {result.stderr[-3000:]}"
    return {**json.loads(lines[-1]), "_stderr": result.stderr, "_rc": result.returncode}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def platform():
    from kpi.platform.chart import UpstreamChartsMissing, upstream_archives

    try:
        upstream_archives()
    except UpstreamChartsMissing as missing:
        pytest.skip(f"the upstream chart archives are not available offline here: {missing}")
    home = Path(tempfile.mkdtemp(prefix="kpi-platform-test-"))
    home.chmod(0o755)  # Postgres runs as `postgres` when we are root
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPI_", "AIRFLOW", "MLFLOW", "AWS_"))}
    env.update({"KPI_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    started = time.monotonic()
    up = _kpi("platform", "up", "--ports", "auto", env=env, timeout=1500)
    up_seconds = round(time.monotonic() - started, 1)
    if not up["ok"]:  # up stops what it started; say why, with the tail of the logs it names
        shutil.rmtree(home, ignore_errors=True)
        pytest.fail(f"kpi platform up failed after {up_seconds} s: {up.get('error')}\n{up['_stderr'][-3000:]}")
    try:
        yield {"env": env, "up": up, "up_seconds": up_seconds, "home": home}
    finally:
        down = _kpi("platform", "down", "--wipe", env=env, timeout=300)
        shutil.rmtree(home, ignore_errors=True)
        assert down["ok"], down
        for name, pid in up.get("pids", {}).items():
            assert not _alive(pid), f"{name} (pid {pid}) still runs after platform down"


def test_platform_up_starts_every_component_healthy(platform):
    up = platform["up"]
    print(f"platform up: {platform['up_seconds']} s")
    assert up["ok"] and up["_rc"] == 0, up["_stderr"][-3000:]
    assert up["health"] and all(up["health"].values()), up["health"]
    assert set(up["health"]) == {"postgres", "s3", "mlflow", "dashboard", "airflow api-server", "airflow scheduler",
                                 "airflow dag-processor", "airflow triggerer", "jupyterlab", "scoring"}
    assert set(up["differences"]) == {"executor", "spark", "object storage", "postgres", "addresses", "images"}
    # the login printed is the chart's generated one and the API accepts it
    assert f"admin / {up['airflow_login']['password']}" in up["_stderr"]


def test_the_smoke_script_passes_against_the_local_platform(platform):
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "smoke.py"), "--target", "local"],
                            env=platform["env"], capture_output=True, text=True, timeout=3600, check=False)
    seconds = round(time.monotonic() - started, 1)
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    summary = json.loads(lines[-1])
    print(f"smoke (local): {seconds} s: {json.dumps(summary)[:2000]}")
    assert summary["ok"] is True and summary["failures"] == [], (summary, result.stderr[-3000:])
    assert result.returncode == 0 and summary["target"] == "local"
    assert summary["training"] >= 1 and summary["prod_bt_crypto_events_rows"] > 0
    assert all(state == "success" for state in summary["dag_runs"].values())
    # the promotion's churn_champion asset started the scoring, which delivered every user; the API serves it
    assert summary["churn_scoring_run"].startswith("asset_triggered__"), summary["churn_scoring_run"]
    assert summary["churn_scores"]["users"] == 2000
    assert summary["scoring_api"]["model_version"] == int(summary["champion_version"])


def _execute_on_server(url: str, token: str, notebook: Path) -> list[dict]:
    """Run every code cell of ``notebook`` in a kernel of the platform's JupyterLab (REST API + the kernel's
    websocket, as the browser does); returns the outputs; fails on the first cell that raises."""
    import uuid

    import nbformat
    import websocket

    def api(method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(f"{url}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            text = answer.read().decode()
        return json.loads(text) if text else {}

    session = api("POST", "/api/sessions", {"path": notebook.name, "type": "notebook", "name": notebook.name,
                                            "kernel": {"name": "python3"}})
    channel = websocket.create_connection(
        f"{url.replace('http', 'ws', 1)}/api/kernels/{session['kernel']['id']}/channels?token={token}", timeout=600)
    outputs = []
    try:
        for cell in nbformat.read(notebook, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            msg_id = uuid.uuid4().hex
            channel.send(json.dumps({
                "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                           "msg_type": "execute_request", "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": cell.source, "silent": False, "store_history": True, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True}}))
            while True:
                message = json.loads(channel.recv())
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = message["msg_type"]
                if kind == "error":
                    pytest.fail(f"{notebook.name}: {message['content']['ename']}: {message['content']['evalue']}\n"
                                f"in cell:\n{cell.source}")
                if kind in ("stream", "execute_result", "display_data"):
                    outputs.append(message["content"])
                if kind == "status" and message["content"]["execution_state"] == "idle":
                    break
    finally:
        channel.close()
        api("DELETE", f"/api/sessions/{session['id']}")
    return outputs


def test_both_notebooks_run_in_the_platforms_jupyterlab(platform):
    """Inside the server the chart configures (its environment: the settings ConfigMap, the read-only
    warehouse role, MLflow and object storage), after the smoke test has filled the stores."""
    up = platform["up"]
    url, token = up["urls"]["jupyterlab"], up["jupyterlab_token"]
    with pytest.raises(urllib.error.HTTPError):  # the token is required
        urllib.request.urlopen(f"{url}/api/sessions", timeout=10)
    crypto = _execute_on_server(url, token, ROOT / "notebooks" / "01-crypto-data-quality.ipynb")
    text = json.dumps(crypto)
    assert "kpi_reader" in text  # the warehouse it printed is the read-only role's
    assert "published" in text or "passed" in text
    churn = _execute_on_server(url, token, ROOT / "notebooks" / "02-churn-model.ipynb")
    assert "champion: version" in json.dumps(churn)
    figures = {name: sum("image/png" in out.get("data", {}) for out in outputs)
               for name, outputs in (("crypto", crypto), ("churn", churn))}
    # the gate chart; the AUC-per-version chart and the SHAP summary
    assert figures["crypto"] >= 1 and figures["churn"] >= 2, figures


def test_platform_up_again_reports_the_running_platform(platform):
    again = _kpi("platform", "up", "--ports", "auto", env=platform["env"], timeout=120)
    assert again["ok"] and again["already_running"] is True
    assert again["pids"] == platform["up"]["pids"]
