"""Smoke test of the platform on a cluster (task smoke): drive it through the Airflow 3 REST API (v2).

Seeds the churn sources in MinIO, triggers crypto_events and the churn DAGs, waits for them, then asserts
the five things the platform promises: rows in prod.bt_crypto_events, a completed SparkApplication, a
`champion` alias in MLflow, a drift report in MinIO and the dashboard answering. Prints one JSON summary.
Only ever run against the project's kind cluster (KUBECONFIG=.kpi/kubeconfig, set by the Taskfile).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import date

DAGS = ("crypto_events", "churn_data_watchdog", "churn_training", "churn_drift_monitor")


def kubectl(namespace: str, *args: str) -> str:
    """Run kubectl in the platform's namespace; returns stdout, raises with stderr on failure."""
    result = subprocess.run(["kubectl", "-n", namespace, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def secret_value(namespace: str, name: str, key: str) -> str:
    """One decoded key of a Secret."""
    escaped = key.replace(".", "\\.")  # jsonpath needs dots inside a key escaped
    raw = kubectl(namespace, "get", "secret", name, "-o", f"jsonpath={{.data.{escaped}}}")
    return base64.b64decode(raw).decode()


@contextmanager
def port_forward(namespace: str, target: str, port: int):
    """kubectl port-forward to localhost:<port> for the duration of the block."""
    proc = subprocess.Popen(["kubectl", "-n", namespace, "port-forward", target, f"{port}:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answered
            except OSError:
                time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def http(method: str, url: str, body: dict | None = None, token: str | None = None) -> dict:
    """A JSON request; returns the decoded JSON answer (raises on HTTP errors with the body)."""
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read().decode()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{method} {url}: {error.code} {error.read().decode()[:500]}") from error
    return json.loads(text) if text else {}


def seed_churn_sources(namespace: str, release: str, users: int) -> str:
    """Simulate the five churn sources locally (`kpi churn simulate`) and upload them to MinIO."""
    import boto3

    target = "churn/sources"
    with tempfile.TemporaryDirectory() as folder, port_forward(namespace, f"svc/{release}-minio", 9000) as s3:
        subprocess.run([sys.executable, "-m", "kpi.cli", "churn", "simulate", "--out", folder, "--users", str(users)],
                       check=True, capture_output=True)
        client = boto3.client("s3", endpoint_url=s3,
                              aws_access_key_id=secret_value(namespace, f"{release}-s3-credentials", "AWS_ACCESS_KEY_ID"),
                              aws_secret_access_key=secret_value(namespace, f"{release}-s3-credentials", "AWS_SECRET_ACCESS_KEY"))
        from pathlib import Path

        for path in sorted(Path(folder).glob("*.csv")):
            client.upload_file(str(path), "kpi", f"{target}/{path.name}")
    return f"s3://kpi/{target}"


def run_dags(api: str, token: str, timeout_s: int) -> dict[str, str]:
    """Unpause and trigger every DAG, then wait until each run finishes; dag_id -> final state."""
    runs = {}
    for dag_id in DAGS:
        http("PATCH", f"{api}/api/v2/dags/{dag_id}", {"is_paused": False}, token)
        run = http("POST", f"{api}/api/v2/dags/{dag_id}/dagRuns",
                   {"logical_date": None, "conf": {}, "note": "task smoke"}, token)
        runs[dag_id] = run["dag_run_id"]
        # the churn DAGs chain through assets: let each finish before the next one starts
        deadline = time.time() + timeout_s
        while True:
            state = http("GET", f"{api}/api/v2/dags/{dag_id}/dagRuns/{runs[dag_id]}", token=token)["state"]
            if state in ("success", "failed"):
                runs[dag_id] = state
                break
            if time.time() > deadline:
                runs[dag_id] = f"timeout ({state})"
                break
            time.sleep(10)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", default="kpi")
    parser.add_argument("--release", default="kpi")
    parser.add_argument("--users", type=int, default=400, help="simulated churn users")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds to wait for each DAG run")
    args = parser.parse_args()
    ns, rel = args.namespace, args.release
    checks: dict[str, object] = {}

    checks["churn_sources"] = seed_churn_sources(ns, rel, args.users)
    with port_forward(ns, f"svc/{rel}-api-server", 8080) as api:
        password = secret_value(ns, f"{rel}-airflow-ui", "admin-password")
        token = http("POST", f"{api}/auth/token", {"username": "admin", "password": password})["access_token"]
        checks["dag_runs"] = run_dags(api, token, args.timeout)

    count = kubectl(ns, "exec", f"{rel}-postgres-0", "--", "sh", "-c",
                    'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U postgres -d kpi -tAc '
                    '"SELECT count(*) FROM prod.bt_crypto_events"').strip()
    checks["prod_bt_crypto_events_rows"] = int(count or 0)

    apps = json.loads(kubectl(ns, "get", "sparkapplications", "-o", "json"))["items"]
    checks["spark_applications_completed"] = sum(
        1 for a in apps if a.get("status", {}).get("applicationState", {}).get("state") == "COMPLETED")

    with port_forward(ns, f"svc/{rel}-mlflow", 5000) as mlflow:
        alias = http("GET", f"{mlflow}/api/2.0/mlflow/registered-models/alias?name=churn-model&alias=champion")
        checks["champion_version"] = alias.get("model_version", {}).get("version")

    import boto3

    with port_forward(ns, f"svc/{rel}-minio", 9000) as s3:
        client = boto3.client("s3", endpoint_url=s3,
                              aws_access_key_id=secret_value(ns, f"{rel}-s3-credentials", "AWS_ACCESS_KEY_ID"),
                              aws_secret_access_key=secret_value(ns, f"{rel}-s3-credentials", "AWS_SECRET_ACCESS_KEY"))
        listing = client.list_objects_v2(Bucket="kpi", Prefix="platform/drift-reports/")
        checks["drift_reports"] = [o["Key"] for o in listing.get("Contents", [])]

    with port_forward(ns, f"svc/{rel}-dashboard", 8501) as dashboard:
        checks["dashboard_health"] = urllib.request.urlopen(f"{dashboard}/_stcore/health", timeout=10).read().decode()

    failures = [name for name, ok in (
        ("dag runs succeeded", all(s == "success" for s in checks["dag_runs"].values())),
        ("rows in prod.bt_crypto_events", checks["prod_bt_crypto_events_rows"] > 0),
        ("a SparkApplication completed", checks["spark_applications_completed"] > 0),
        ("a champion alias in MLflow", bool(checks["champion_version"])),
        ("a drift report in MinIO", bool(checks["drift_reports"])),
        ("the dashboard answers", checks["dashboard_health"].strip() == "ok"),
    ) if not ok]
    print(json.dumps({"ok": not failures, "failures": failures, "date": date.today().isoformat(), **checks}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
