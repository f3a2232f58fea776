"""Smoke test of the platform (task smoke): drive it through the Airflow 3 REST API (v2).

Seeds the churn sources, drops the crypto extracts into the landing prefix
(``<KPI_STORAGE_URL>/landing/crypto/``, as the upstream system would), triggers crypto_events (whose first
task ingests them) and the churn DAGs, waits for them, then asserts what the platform promises: the landed
files ingested, rows in prod.bt_crypto_events, the training step (a completed SparkApplication on the
cluster), a `champion` alias in MLflow, the champion's scores of every user in prod.churn_scores
(churn_scoring, started by the promotion's churn_champion asset), the scoring API serving that version, a
drift report in object storage and the dashboard answering. Prints one JSON summary line; exits 1 when a
check failed.

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
from datetime import UTC, date, datetime, timedelta

DAGS = ("crypto_events", "churn_data_watchdog", "churn_training", "churn_drift_monitor", "churn_scoring")
# the platform's KPI_STORAGE_URL: global.platform.storageUrl of the chart, s3://kpi/platform (values-local.yaml
# keeps it, and the local platform renders the same values)
STORAGE_BUCKET, STORAGE_PREFIX = "kpi", "platform"
CRYPTO_LANDING = f"{STORAGE_PREFIX}/landing/crypto/"
# crypto_events processes KPI_CRYPTO_START_DATE (2026-01-01) first, with catch-up: the smoke run is that first
# scheduled run (logical date D, data interval [D, D+1): it fires at 00:00 UTC of D+1 and processes D)
CRYPTO_DAY = date(2026, 1, 1)
# churn sources are simulated up to today: the watchdog's scheduled runs (every 15 min, unpaused by the smoke
# test) train with as_of = the run's date, so the data must reach it
CHURN_AS_OF = datetime.now(UTC).date()


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
        """The warehouse Secret's URL, pointed at a port-forward to the Postgres Service."""
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
                     "dashboard": urls["dashboard"], "scoring": urls.get("scoring")}

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


def land_crypto_extracts(target, day: date) -> dict:
    """Simulate five days of crypto extracts ending on ``day`` (``kpi crypto simulate``) and drop them into the
    platform's landing prefix, named ``BT_CRYPTO_TRANSACTION_HISTORY_<extract date>.csv`` as upstream names
    them; the crypto_events run ingests them itself."""
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder, target.service("minio", 9000) as s3:
        kpi_cli("crypto", "simulate", "--start", (day - timedelta(days=4)).isoformat(), "--end", day.isoformat(),
                "--out", folder, "--rows-per-day", "200")
        client = s3_client(target, s3)
        names = []
        for path in sorted(Path(folder).glob("*.csv")):
            client.upload_file(str(path), STORAGE_BUCKET, CRYPTO_LANDING + path.name)
            names.append(path.name)
    if not names:
        raise RuntimeError(f"kpi crypto simulate wrote no extract for {day}")
    return {"landing": f"s3://{STORAGE_BUCKET}/{CRYPTO_LANDING}", "files": names}


def landed_files_ingested(target, names: list[str]) -> dict:
    """Where the landed files are now: still waiting directly under the landing prefix, moved to
    ``processed/`` (ingested, or skipped as content already ingested) or to ``rejected/``."""
    with target.service("minio", 9000) as s3:
        client = s3_client(target, s3)
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=STORAGE_BUCKET, Prefix=CRYPTO_LANDING) for o in page.get("Contents", [])]
    where = {"waiting": [], "processed": [], "rejected": []}
    for key in keys:
        rest = key[len(CRYPTO_LANDING):]
        name = rest.rsplit("/", 1)[-1]
        if name in names:
            where["waiting" if "/" not in rest else rest.split("/", 1)[0]].append(name)
    return {k: sorted(set(v)) for k, v in where.items()}


def wait_for(api: str, token: str, dag_id: str, run_id: str, timeout_s: int) -> str:
    """Poll one DAG run until it finishes; returns its final state (or timeout)."""
    deadline = time.time() + timeout_s
    while True:
        state = http("GET", f"{api}/api/v2/dags/{dag_id}/dagRuns/{run_id}", token=token)["state"]
        if state in ("success", "failed") or time.time() > deadline:
            return state if state in ("success", "failed") else f"timeout ({state})"
        time.sleep(10)


def trigger(api: str, token: str, dag_id: str, conf: dict, logical_date: str | None = None,
            data_interval: tuple[str, str] | None = None) -> str:
    """Create a DAG run (API v2); returns its run id. ``data_interval`` (start, end) overrides the interval the
    timetable would infer from ``logical_date``. When a run of that logical date exists (an earlier smoke
    test on the same platform, or the scheduler's own run of that date), clear it so that it runs again: the
    pipelines are idempotent."""
    body = {"logical_date": logical_date, "conf": conf, "note": "task smoke"}
    if data_interval:
        body["data_interval_start"], body["data_interval_end"] = data_interval
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
    """Drive the five DAGs in order; (dag_id -> final state, dag_id -> run id) of the runs waited for."""
    states: dict[str, str] = {}
    runs: dict[str, str] = {}
    for dag_id in DAGS:  # fail fast, naming the DAG, when the image lacks one
        http("GET", f"{api}/api/v2/dags/{dag_id}", token=token)
    # crypto_events catches up from its start date: our run is exactly the scheduler's first one (logical date
    # D, data interval [D, D+1), so the scheduler does not make a second run of D), its first task ingests what
    # landed and the rest process the window ending on D; the DAG is paused again right after so the catch-up
    # does not compete with the churn runs on a small cluster
    start, end = (f"{d.isoformat()}T00:00:00Z" for d in (crypto_day, crypto_day + timedelta(days=1)))
    run_id = trigger(api, token, "crypto_events", {}, start, (start, end))
    set_paused(api, token, "crypto_events", False)
    runs["crypto_events"] = run_id
    states["crypto_events"] = wait_for(api, token, "crypto_events", run_id, timeout_s)
    set_paused(api, token, "crypto_events", True)

    churn_conf = {"data_url": data_url, "as_of": as_of.isoformat()}
    since = datetime.now(UTC).isoformat()
    for dag_id in ("churn_data_watchdog", "churn_training", "churn_drift_monitor", "churn_scoring"):
        set_paused(api, token, dag_id, False)
    run_id = trigger(api, token, "churn_data_watchdog", churn_conf)
    runs["churn_data_watchdog"] = run_id
    states["churn_data_watchdog"] = wait_for(api, token, "churn_data_watchdog", run_id, timeout_s)
    # new sources emit the churn_sources asset, which schedules training; trigger it only if it did not
    run_id = asset_triggered_run(api, token, "churn_training", since) or trigger(api, token, "churn_training", churn_conf)
    runs["churn_training"] = run_id
    states["churn_training"] = wait_for(api, token, "churn_training", run_id, timeout_s)
    # a promotion emits churn_champion, which schedules churn_scoring; without one (an earlier smoke test's
    # champion stayed), the day's scoring is started by hand
    run_id = asset_triggered_run(api, token, "churn_scoring", since) or trigger(api, token, "churn_scoring", churn_conf)
    runs["churn_scoring"] = run_id
    states["churn_scoring"] = wait_for(api, token, "churn_scoring", run_id, timeout_s)
    run_id = trigger(api, token, "churn_drift_monitor", churn_conf)
    runs["churn_drift_monitor"] = run_id
    states["churn_drift_monitor"] = wait_for(api, token, "churn_drift_monitor", run_id, timeout_s)
    return states, runs


def delivered_scores(warehouse_url: str, as_of: date) -> dict:
    """Users and model versions of the scores delivered for ``as_of``."""
    import psycopg

    with psycopg.connect(warehouse_url) as conn:
        users, versions = conn.execute("SELECT count(*), array_agg(DISTINCT model_version) FROM prod.churn_scores "
                                       "WHERE as_of = %s", (as_of,)).fetchone()
    return {"as_of": as_of.isoformat(), "users": users, "model_versions": sorted(versions or [])}


def scoring_api(url: str, champion_version: str | None, wait_s: int = 120) -> dict:
    """The API's served version (it follows the alias within its TTL) and one score of a typical user."""
    deadline = time.time() + wait_s
    while True:
        try:
            model = http("GET", f"{url}/model")
        except (RuntimeError, OSError) as error:
            model = {"error": str(error)}
        if str(model.get("version")) == str(champion_version) or time.time() > deadline:
            break
        time.sleep(5)
    if "features" not in model:
        return {"model_version": None, "error": model.get("error")}
    user = {name: spec.get("default") for name, spec in model["features"].items()}
    answer = http("POST", f"{url}/score", {"users": [{"id": 1, "features": user}], "top_k": 3})
    prediction = answer["predictions"][0]
    return {"model_version": answer["model_version"], "p_active_60d": prediction["p_active_60d"],
            "top_features": [c["feature"] for c in prediction["shap"]["contributions"]]}


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
    checks["crypto_landed"] = land_crypto_extracts(target, CRYPTO_DAY)
    with target.service("api-server", 8080) as api:
        token = login(target, api)
        checks["dag_runs"], runs = run_dags(api, token, CRYPTO_DAY, checks["churn_sources"], CHURN_AS_OF, args.timeout)
        checks["training"] = target.training_ran(api, token, runs["churn_training"])
        checks["churn_scoring_run"] = runs["churn_scoring"]  # asset_triggered__...: started by the promotion

    checks["crypto_landing_after_run"] = landed_files_ingested(target, checks["crypto_landed"]["files"])
    checks["prod_bt_crypto_events_rows"] = target.prod_rows()

    with target.service("mlflow", 5000) as mlflow:
        try:
            alias = http("GET", f"{mlflow}/api/2.0/mlflow/registered-models/alias?name=churn-model&alias=champion")
        except RuntimeError as missing:  # 404: no model or no alias, a failed check rather than a crash
            alias = {"error": str(missing)}
        checks["champion_version"] = alias.get("model_version", {}).get("version")

    with target.warehouse_url() as url:
        checks["churn_scores"] = delivered_scores(url, CHURN_AS_OF)

    with target.service("scoring", 8000) as scoring:
        checks["scoring_api"] = scoring_api(scoring, checks["champion_version"])

    with target.service("minio", 9000) as s3:
        listing = s3_client(target, s3).list_objects_v2(Bucket=STORAGE_BUCKET,
                                                        Prefix=f"{STORAGE_PREFIX}/drift-reports/")
        checks["drift_reports"] = [o["Key"] for o in listing.get("Contents", [])]

    with target.service("dashboard", 8501) as dashboard:
        checks["dashboard_health"] = urllib.request.urlopen(f"{dashboard}/_stcore/health", timeout=10).read().decode()

    failures = [name for name, ok in (
        ("dag runs succeeded", all(s == "success" for s in checks["dag_runs"].values())),
        ("the landed crypto files were ingested from the landing prefix",
         not checks["crypto_landing_after_run"]["waiting"]
         and checks["crypto_landing_after_run"]["processed"] == checks["crypto_landed"]["files"]),
        ("rows in prod.bt_crypto_events", checks["prod_bt_crypto_events_rows"] > 0),
        (target.training_check, checks["training"] > 0),
        ("a champion alias in MLflow", bool(checks["champion_version"])),
        ("the champion's scores of every user in prod.churn_scores",
         checks["churn_scores"]["users"] == args.users
         and checks["churn_scores"]["model_versions"] == [int(checks["champion_version"] or 0)]),
        ("the scoring API serves the champion", checks["scoring_api"].get("model_version") is not None
         and str(checks["scoring_api"]["model_version"]) == str(checks["champion_version"])),
        ("a drift report in object storage", bool(checks["drift_reports"])),
        ("the dashboard answers", checks["dashboard_health"].strip() == "ok"),
    ) if not ok]
    checks["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps({"ok": not failures, "failures": failures, **checks}, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
