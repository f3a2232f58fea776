"""The MLflow server started for real with the command line the chart renders (stores swapped for local ones).

Slow: MLflow creates its sqlite schema on first start (a minute or two on a busy machine)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .platform import RELEASE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(manifests, tmp_path_factory):
    deployment = next(o for o in manifests["local"] if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{RELEASE}-mlflow")
    args = list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    swap = {
        "$(MLFLOW_BACKEND_STORE_URI)": f"sqlite:///{folder / 'mlflow.db'}",  # Postgres on the cluster
        "s3://mlflow/artifacts": (folder / "artifacts").as_uri(),          # MinIO on the cluster
    }
    args = [swap.get(a, a) for a in args]
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:  # not listening yet
                if proc.poll() is not None:
                    pytest.fail(f"mlflow server exited: {proc.stderr.read()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer /health within 300 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a slow graceful shutdown is not what this test checks
            proc.kill()
            proc.wait(timeout=10)


def _status(url: str, host: str) -> int:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("host", [
    f"{RELEASE}-mlflow:5000",                          # worker pods, the dashboard
    f"{RELEASE}-mlflow.kpi.svc.cluster.local:5000",    # fully qualified
    "localhost:5000",                                  # kubectl port-forward (task ui)
])
def test_the_server_answers_the_names_clients_use(mlflow_server, host):
    assert _status(mlflow_server, host) == 200


def test_the_server_refuses_a_foreign_host_header(mlflow_server):
    assert _status(mlflow_server, "attacker.example.com") in (400, 403)
