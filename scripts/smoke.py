"""Smoke test of the platform (task smoke): drive it through the Airflow 3 REST API (v2).

Seeds the churn sources and the crypto extracts, triggers crypto_events and the churn DAGs, waits for them,
then asserts what the platform promises: rows in prod.bt_crypto_events, the training step (a completed
SparkApplication on the cluster), a `champion` alias in MLflow, a drift report in object storage and the
dashboard answering. Prints one JSON summary line; exits 1 when a check failed.

Two targets, the same checks:
- ``--target kind`` (default): the project's kind cluster (KUBECONFIG=.kpi/kubeconfig, set by the Taskfile),
  reached with kubectl port-forward and kubectl exec.
- ``--target local``: the local platform of ``task platform-up`` (``kpi platform up``), reached at the
  loopback ports and with the Secrets it recorded under ``<KPI_HOME>/platform``. There, no SparkApplication
  exists (Spark runs with a local master): the training check is that the DAG's training step ran.
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
import urllib.parse
import urllib.request
from contextlib import contextmanager
from datetime import date, datetime, timezone

DAGS = ("crypto_events", "churn_data_watchdog", "churn_training", "churn_drift_monitor")
# crypto_events starts on 2026-01-01 with catch-up: the smoke run takes that first day
CRYPTO_DAY = date(2026, 1, 1)
# churn sources are simulated up to today: the watchdog's scheduled runs (every 15 min, unpaused by the smoke
# test) train with as_of = the run's date, so the data must reach it
CHURN_AS_OF = datetime.now(timezone.utc).date()


class KindTarget:
    """The kind cluster: Secrets through kubectl, services through port-forward."""

    name = "kind"
    training_check = "a SparkApplication completed"

    def __init__(self, namespace: str, release: str) -> None:
        self.namespace, self.release = namespace, release

    def secret(self, name: str, key: str) -> str:
        return secret_value(self.namespace, name, key)

    def service(self, service: str, port: int):
        return port_forward(self.namespace, f"svc/{self.release}-{service}", port)

    @contextmanager
    def warehouse_url(self):
        from urllib.parse import urlsplit, urlunsplit

        url = urlsplit(self.secret(f"{self.release}-warehouse", "url"))
        with self.service("postgres", 5432):
            yield urlunsplit(url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:5432"))

    def prod_rows(self) -> int:
        count = kubectl(self.namespace, "exec", f"{self.release}-postgres-0", "--", "sh", "-c",
                        'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U postgres -d kpi -tAc '
                        '"SELECT count(*) FROM prod.bt_crypto_events"').strip()
        return int(count or 0)

    def training_ran(self, api: str, token: str, run_id: str) -> int:
        """SparkApplications in state COMPLETED."""
        apps = json.loads(kubectl(self.namespace, "get", "sparkapplications", "-o", "json"))["items"]
        return sum(1 for a in apps if a.get("status", {}).get("applicationState", {}).get("state") == "COMPLETED")


class LocalTarget:
    """The local platform (`kpi platform up`): loopback ports and the Secrets it recorded."""

    name = "local"
    training_check = "the training step ran"

    def __init__(self, release: str) -> None:
        from kpi.platform.local import read_state, state_dir

        self.release = release
        self.state = read_state()
        self.secrets = json.loads((state_dir() / "secrets.json").read_text())
        urls = self.state["urls"]
        self.urls = {"minio": urls["s3"], "api-server": urls["airflow"], "mlflow": urls["mlflow"],
                     "dashboard": urls["dashboard"]}

    def secret(self, name: str, key: str) -> str:
        return base64.b64decode(self.secrets[name][key]).decode()

    @contextmanager
    def service(self, service: str, port: int):
        yield self.urls[service]

    @contextmanager
    def warehouse_url(self):
        yield self.state["warehouse_url"]

    def prod_rows(self) -> int:
        import psycopg

        with psycopg.connect(self.state["warehouse_url"]) as conn:
            return conn.execute("SELECT count(*) FROM prod.bt_crypto_events").fetchone()[0]

    def training_ran(self, api: str, token: str, run_id: str) -> int:
        """Training steps of the churn_training run that succeeded (spark-submit with a local master)."""
        tis = http("GET", f"{api}/api/v2/dags/churn_training/dagRuns/{run_id}/taskInstances", token=token)
        return sum(1 for ti in tis["task_instances"] if ti["task_id"] == "train" and ti["state"] == "success")


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


def s3_client(target, endpoint: str):
    """boto3 S3 client with the pipelines' keys (Secret <release>-s3-credentials)."""
    import boto3

    secret = f"{target.release}-s3-credentials"
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=target.secret(secret, "AWS_ACCESS_KEY_ID"),
                        aws_secret_access_key=target.secret(secret, "AWS_SECRET_ACCESS_KEY"))


def kpi_cli(*args: str, env: dict | None = None) -> dict:
    """Run the project's CLI locally; returns its JSON summary (last stdout line)."""
    import os

    result = subprocess.run([sys.executable, "-m", "kpi.cli", *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kpi {' '.join(args)}: {result.stdout[-500:]} {result.stderr[-500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def seed_churn_sources(target, users: int, as_of: date) -> str:
    """Simulate the five churn sources locally (`kpi churn simulate`) and upload them to object storage."""
    from pathlib import Path

    prefix = "churn/sources"
    with tempfile.TemporaryDirectory() as folder, target.service("minio", 9000) as s3:
        kpi_cli("churn", "simulate", "--out", folder, "--users", str(users), "--as-of", as_of.isoformat())
        client = s3_client(target, s3)
        for path in sorted(Path(folder).glob("*.csv")):
            client.upload_file(str(path), "kpi", f"{prefix}/{path.name}")
    return f"s3://kpi/{prefix}"


def seed_crypto_raw(target, day: date) -> dict:
    """Simulate five days of crypto extracts ending on ``day`` and ingest them into the platform's warehouse."""
    from datetime import timedelta

    with tempfile.TemporaryDirectory() as folder, target.warehouse_url() as url:
        kpi_cli("crypto", "simulate", "--start", (day - timedelta(days=4)).isoformat(), "--end", day.isoformat(),
                "--out", folder, "--rows-per-day", "200")
        return kpi_cli("crypto", "ingest", folder, env={"KPI_DATABASE_URL": url})


def wait_for(api: str, token: str, dag_id: str, run_id: str, timeout_s: int) -> str:
    """Poll one DAG run until it finishes; returns its final state (or timeout)."""
    deadline = time.time() + timeout_s
    while True:
        state = http("GET", f"{api}/api/v2/dags/{dag_id}/dagRuns/{run_id}", token=token)["state"]
        if state in ("success", "failed") or time.time() > deadline:
            return state if state in ("success", "failed") else f"timeout ({state})"
        time.sleep(10)


def trigger(api: str, token: str, dag_id: str, conf: dict, logical_date: str | None = None) -> str:
    """Create a DAG run (API v2); returns its run id. When a run of that logical date exists (an earlier smoke
    test on the same platform), clear it so that it runs again: the pipelines are idempotent."""
    body = {"logical_date": logical_date, "conf": conf, "note": "task smoke"}
    try:
        return http("POST", f"{api}/api/v2/dags/{dag_id}/dagRuns", body, token)["dag_run_id"]
    except RuntimeError as error:
        if logical_date is None or ": 409 " not in str(error):
            raise
    when = urllib.parse.quote(logical_date)
    existing = http("GET", f"{api}/api/v2/dags/{dag_id}/dagRuns?logical_date_gte={when}&logical_date_lte={when}",
                    token=token)["dag_runs"][0]["dag_run_id"]
    http("POST", f"{api}/api/v2/dags/{dag_id}/clearTaskInstances",
         {"dag_run_id": existing, "dry_run": False, "only_failed": False, "reset_dag_runs": True}, token)
    return existing


def login(target, api: str) -> str:
    """A JWT for the chart's admin user (password from Secret <release>-airflow-ui)."""
    password = target.secret(f"{target.release}-airflow-ui", "admin-password")
    return http("POST", f"{api}/auth/token", {"username": "admin", "password": password})["access_token"]


def set_paused(api: str, token: str, dag_id: str, paused: bool) -> None:
    http("PATCH", f"{api}/api/v2/dags/{dag_id}", {"is_paused": paused}, token)


def asset_triggered_run(api: str, token: str, dag_id: str, since: str, wait_s: int = 120) -> str | None:
    """The first asset-triggered run of ``dag_id`` queued at or after ``since`` (ISO time), if the scheduler
    creates one within ``wait_s``; runs of earlier smoke tests do not count."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        runs = http("GET", f"{api}/api/v2/dags/{dag_id}/dagRuns?order_by=run_after&limit=20"
                           f"&run_after_gte={urllib.parse.quote(since)}", token=token)
        for run in runs.get("dag_runs", []):
            if run.get("run_type") == "asset_triggered":
                return run["dag_run_id"]
        time.sleep(10)
    return None


def run_dags(api: str, token: str, crypto_day: date, data_url: str, as_of: date,
             timeout_s: int) -> tuple[dict[str, str], dict[str, str]]:
    """Drive the four DAGs in order; (dag_id -> final state, dag_id -> run id) of the runs waited for."""
    states: dict[str, str] = {}
    runs: dict[str, str] = {}
    for dag_id in DAGS:  # fail fast, naming the DAG, when the image lacks one
        http("GET", f"{api}/api/v2/dags/{dag_id}", token=token)
    # crypto_events catches up from its start date: our run takes that first interval, the DAG is paused
    # again right after so the catch-up does not compete with the churn runs on a small cluster
    run_id = trigger(api, token, "crypto_events", {}, f"{crypto_day.isoformat()}T00:00:00Z")
    set_paused(api, token, "crypto_events", False)
    runs["crypto_events"] = run_id
    states["crypto_events"] = wait_for(api, token, "crypto_events", run_id, timeout_s)
    set_paused(api, token, "crypto_events", True)

    churn_conf = {"data_url": data_url, "as_of": as_of.isoformat()}
    since = datetime.now(timezone.utc).isoformat()
    for dag_id in ("churn_data_watchdog", "churn_training", "churn_drift_monitor"):
        set_paused(api, token, dag_id, False)
    run_id = trigger(api, token, "churn_data_watchdog", churn_conf)
    runs["churn_data_watchdog"] = run_id
    states["churn_data_watchdog"] = wait_for(api, token, "churn_data_watchdog", run_id, timeout_s)
    # new sources emit the churn_sources asset, which schedules training; trigger it only if it did not
    run_id = asset_triggered_run(api, token, "churn_training", since) or trigger(api, token, "churn_training", churn_conf)
    runs["churn_training"] = run_id
    states["churn_training"] = wait_for(api, token, "churn_training", run_id, timeout_s)
    run_id = trigger(api, token, "churn_drift_monitor", churn_conf)
    runs["churn_drift_monitor"] = run_id
    states["churn_drift_monitor"] = wait_for(api, token, "churn_drift_monitor", run_id, timeout_s)
    return states, runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("kind", "local"), default="kind",
                        help="kind: the project's kind cluster; local: the platform of `task platform-up`")
    parser.add_argument("--namespace", default="kpi")
    parser.add_argument("--release", default="kpi")
    parser.add_argument("--users", type=int, default=2000,
                        help="simulated churn users (a holdout of 400: enough for a stable calibration guardrail)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds to wait for each DAG run")
    args = parser.parse_args()
    target = LocalTarget(args.release) if args.target == "local" else KindTarget(args.namespace, args.release)
    checks: dict[str, object] = {"target": target.name}
    started = time.monotonic()

    # a watchdog left running by an earlier smoke test would see the new sources before this run's own
    # watchdog does, with its own as_of: pause the DAGs until the data is in place
    with target.service("api-server", 8080) as api:
        token = login(target, api)
        for dag_id in DAGS:
            set_paused(api, token, dag_id, True)
    checks["churn_sources"] = seed_churn_sources(target, args.users, CHURN_AS_OF)
    checks["crypto_ingest"] = seed_crypto_raw(target, CRYPTO_DAY)
    with target.service("api-server", 8080) as api:
        token = login(target, api)
        checks["dag_runs"], runs = run_dags(api, token, CRYPTO_DAY, checks["churn_sources"], CHURN_AS_OF, args.timeout)
        checks["training"] = target.training_ran(api, token, runs["churn_training"])

    checks["prod_bt_crypto_events_rows"] = target.prod_rows()

    with target.service("mlflow", 5000) as mlflow:
        try:
            alias = http("GET", f"{mlflow}/api/2.0/mlflow/registered-models/alias?name=churn-model&alias=champion")
        except RuntimeError as missing:  # 404: no model or no alias, a failed check rather than a crash
            alias = {"error": str(missing)}
        checks["champion_version"] = alias.get("model_version", {}).get("version")

    with target.service("minio", 9000) as s3:
        listing = s3_client(target, s3).list_objects_v2(Bucket="kpi", Prefix="platform/drift-reports/")
        checks["drift_reports"] = [o["Key"] for o in listing.get("Contents", [])]

    with target.service("dashboard", 8501) as dashboard:
        checks["dashboard_health"] = urllib.request.urlopen(f"{dashboard}/_stcore/health", timeout=10).read().decode()

    failures = [name for name, ok in (
        ("dag runs succeeded", all(s == "success" for s in checks["dag_runs"].values())),
        ("rows in prod.bt_crypto_events", checks["prod_bt_crypto_events_rows"] > 0),
        (target.training_check, checks["training"] > 0),
        ("a champion alias in MLflow", bool(checks["champion_version"])),
        ("a drift report in object storage", bool(checks["drift_reports"])),
        ("the dashboard answers", checks["dashboard_health"].strip() == "ok"),
    ) if not ok]
    checks["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps({"ok": not failures, "failures": failures, **checks}, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
