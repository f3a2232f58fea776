"""The Spark step of churn training, behind one switch: ``KPI_SPARK_BACKEND``.

``local`` runs the training entry point (``kpi/churn/job.py``) with ``spark-submit`` on a local master;
``kubernetes`` renders a ``SparkApplication`` (``sparkoperator.k8s.io/v1beta2``) from the template shipped
in the package, which Airflow's ``SparkKubernetesOperator`` submits to the Kubeflow Spark operator. Both
run the same file with the same arguments; the job writes ``training-runs/<as_of>/<data_version>.json``
under ``KPI_STORAGE_URL``, which is how the next step learns the model version whichever backend ran.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from kpi import storage
from kpi.settings import Settings

log = logging.getLogger(__name__)

TEMPLATE_NAME = "sparkapplication.yaml.j2"
TRAINING_RUNS_PREFIX = "training-runs"


LOG_TAIL_LINES = 12
LOG_TAIL_CHARS = 1500
ERROR_CHARS = 2000


class TrainingJobError(RuntimeError):
    """The Spark training job failed or left no result.

    The message starts with the job's own error (``<exception type>: <message>``); a shortened tail of the
    Spark log may follow. ``job_error_type`` and ``job_error`` hold the job's error alone.
    """

    def __init__(self, message: str, job_error_type: str | None = None, job_error: str | None = None,
                 log_tail: str | None = None):
        super().__init__(message)
        self.job_error_type = job_error_type
        self.job_error = job_error
        self.log_tail = log_tail


def describe_job_error(exc: BaseException) -> dict[str, str]:
    """``error_type`` and ``error`` of an exception raised in the job, without JVM stack frames.

    A Py4J error names the Java exception inside its message: that exception's class and message are the
    job's real error, not the Python wrapper, and its innermost ``Caused by`` (often the actual reason,
    such as a file that cannot be read) is appended.
    """
    error_type = type(exc).__name__
    message = str(exc)
    java = re.search(r"^: ([\w.$]+(?:Exception|Error)): (.*)$", message, re.MULTILINE)
    if error_type == "Py4JJavaError" and java:
        causes = re.findall(r"^Caused by: ([\w.$]+): (.*)$", message, re.MULTILINE)
        error_type, message = java.group(1).rsplit(".", 1)[-1], java.group(2).strip()
        if causes:
            cause_type, cause = causes[-1]
            message = f"{message} -- caused by {cause_type.rsplit('.', 1)[-1]}: {cause.strip()}"
    message = message.split("\nJVM stacktrace:")[0]
    lines = [ln for ln in message.splitlines() if not ln.lstrip().startswith("at ") and ln.strip()]
    return {"error_type": error_type, "error": "\n".join(lines)[:ERROR_CHARS]}


def job_error_url(settings: Settings, as_of: dt.date | str, data_version: str | None) -> str:
    """``<storage>/training-runs/<as_of>/<data_version>.error.json``: the job's error when it fails."""
    day = as_of.isoformat() if isinstance(as_of, dt.date) else str(as_of)
    return storage.join(settings.resolved_storage_url, TRAINING_RUNS_PREFIX, day,
                        f"{data_version or 'unknown-data-version'}.error.json")


def write_job_error(settings: Settings, data_url: str, as_of: dt.date | str, error: dict[str, str]) -> str | None:
    """Store the job's error document (best effort: a storage failure must not hide the job's error)."""
    try:
        from kpi.churn.sources import data_version

        try:
            version = data_version(data_url, settings)
        except Exception:  # noqa: BLE001 - a missing source is the error being reported
            version = None
        url = job_error_url(settings, as_of, version)
        storage.write_text(url, json.dumps({"ok": False, **error}), settings)
        return url
    except Exception:
        log.exception("could not store the training job's error")
        return None


def _read_job_error(settings: Settings, as_of: dt.date | str, data_version: str) -> dict[str, str] | None:
    url = job_error_url(settings, as_of, data_version)
    try:
        if storage.exists(url, settings):
            return json.loads(storage.read_bytes(url, settings))
    except (OSError, ValueError):
        return None
    return None


def _clear_job_error(settings: Settings, as_of: dt.date | str, data_version: str) -> None:
    fs, path = storage.filesystem(job_error_url(settings, as_of, data_version), settings)
    if fs.exists(path):
        fs.rm(path)


def log_tail(text: str, lines: int = LOG_TAIL_LINES, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``lines`` lines of a Spark log that are not INFO chatter, each and all shortened."""
    kept = [ln[:300] for ln in text.splitlines() if ln.strip() and " INFO " not in ln]
    tail = "\n".join(kept[-lines:])
    return tail[-chars:]


def job_failure(returncode: int, stdout: str, stderr: str) -> TrainingJobError:
    """The error of a failed ``spark-submit``: the job's own error first, then a short log tail.

    The job prints ``{"ok": false, "error_type", "error"}`` as its last line; when it died before (a
    crashed interpreter or JVM), the last Python traceback line of its log is the error instead.
    """
    error_type = error = None
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                document = json.loads(line)
            except ValueError:
                continue
            if document.get("ok") is False:
                error_type, error = document.get("error_type"), document.get("error")
            break
    if error is None:
        raised = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", stderr or "", re.MULTILINE)
        if raised:
            error_type, error = raised[-1][0].rsplit(".", 1)[-1], raised[-1][1]
    tail = log_tail(stderr or stdout or "")
    head = f"{error_type}: {error}" if error else f"spark-submit exited with {returncode} and the job reported no error"
    message = f"{head}\n-- training job failed (spark-submit exit {returncode}); last Spark log lines:\n{tail}"
    return TrainingJobError(message, job_error_type=error_type, job_error=error, log_tail=tail)


def job_path() -> Path:
    """The training entry point inside the installed package."""
    return Path(__file__).resolve().parent / "job.py"


def training_result_url(settings: Settings, as_of: dt.date | str, data_version: str) -> str:
    """``<storage>/training-runs/<as_of>/<data_version>.json`` (written by the job)."""
    day = as_of.isoformat() if isinstance(as_of, dt.date) else str(as_of)
    return storage.join(settings.resolved_storage_url, TRAINING_RUNS_PREFIX, day, f"{data_version}.json")


def read_training_result(settings: Settings, as_of: dt.date | str, data_version: str) -> dict[str, Any]:
    """The job's result document (``run_id``, ``model_version``, ``auc``, ``data_version``...).

    Raises:
        TrainingJobError: When the job left no result for this date and data version.
    """
    url = training_result_url(settings, as_of, data_version)
    if not storage.exists(url, settings):
        raise TrainingJobError(f"the training job left no result at {url}")
    return json.loads(storage.read_bytes(url, settings))


def job_arguments(data_url: str, as_of: dt.date | str, trials: int | None = None) -> list[str]:
    """Command-line arguments of ``job.py`` (the same for both backends)."""
    day = as_of.isoformat() if isinstance(as_of, dt.date) else str(as_of)
    args = ["--data", str(data_url), "--as-of", day]
    if trials is not None:
        args += ["--trials", str(trials)]
    return args


# --- kubernetes: the SparkApplication ---------------------------------------------------------------------
def _spark_version(settings: Settings) -> str:
    if settings.spark_version:
        return settings.spark_version
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyspark")
    except PackageNotFoundError:
        return "4.0.0"


def application_name(as_of: dt.date | str) -> str:
    """A DNS-1123 name for the application of ``as_of`` (the operator appends a random suffix)."""
    day = as_of.isoformat() if isinstance(as_of, dt.date) else str(as_of)
    slug = re.sub(r"[^a-z0-9-]+", "-", day.lower()).strip("-")
    return f"churn-train-{slug}"[:50].rstrip("-") or "churn-train"


def template_values(settings: Settings, data_url: str, as_of: dt.date | str, *, trials: int | None = None,
                    name: str | None = None) -> dict[str, Any]:
    """Values of the SparkApplication template, taken from settings (the only cluster-specific input)."""
    env = {
        "KPI_ENV": settings.env,
        "KPI_STORAGE_URL": settings.resolved_storage_url,
        "KPI_SPARK_BACKEND": "kubernetes",
        "KPI_CHURN_SEARCH_TRIALS": str(trials if trials is not None else settings.churn_search_trials),
        "KPI_CHURN_SEED": str(settings.churn_seed),
        "PYSPARK_PYTHON": "python3",
    }
    if settings.mlflow_tracking_uri:
        env["MLFLOW_TRACKING_URI"] = settings.resolved_mlflow_uri
    if settings.s3_endpoint_url:
        env["KPI_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
        env["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    secret_env = [
        {"name": "AWS_ACCESS_KEY_ID", "secret": settings.spark_s3_secret, "key": "AWS_ACCESS_KEY_ID"},
        {"name": "AWS_SECRET_ACCESS_KEY", "secret": settings.spark_s3_secret, "key": "AWS_SECRET_ACCESS_KEY"},
        {"name": "KPI_DATABASE_URL", "secret": settings.spark_database_secret, "key": "url"},
    ]
    spark_conf = {"spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false"}
    if settings.s3_endpoint_url:
        # The cluster's Spark image carries the S3A jars; MinIO needs path-style addressing.
        spark_conf.update({
            "spark.hadoop.fs.s3a.endpoint": settings.s3_endpoint_url,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(settings.s3_endpoint_url.startswith("https")).lower(),
        })
    return {
        "name": name or application_name(as_of),
        "namespace": settings.spark_namespace,
        "image": settings.spark_image,
        "image_pull_policy": "IfNotPresent",
        "main_application_file": settings.spark_main_application_file,
        "arguments": job_arguments(data_url, as_of, trials),
        "spark_version": _spark_version(settings),
        "ttl_seconds": 3600,
        "spark_conf": spark_conf,
        "service_account": settings.spark_service_account,
        "env": env,
        "secret_env": secret_env,
        "resources": {
            "driver": {"cores": 1, "core_request": settings.spark_driver_cores_request, "core_limit": "1",
                       "memory": settings.spark_driver_memory, "memory_overhead": settings.spark_memory_overhead},
            "executor": {"cores": 1, "core_request": settings.spark_executor_cores_request, "core_limit": "1",
                         "memory": settings.spark_executor_memory, "memory_overhead": settings.spark_memory_overhead,
                         "instances": settings.spark_executor_instances},
        },
    }


def render_spark_application_yaml(settings: Settings, data_url: str, as_of: dt.date | str, *,
                                  trials: int | None = None, name: str | None = None) -> str:
    """The SparkApplication manifest of one training run, as YAML text (from the packaged template).

    ``data_url`` and ``as_of`` may be Airflow template expressions: they are rendered into quoted strings.
    """
    from importlib.resources import files

    import jinja2

    source = files("kpi.churn").joinpath("templates", TEMPLATE_NAME).read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    return env.from_string(source).render(**template_values(settings, data_url, as_of, trials=trials, name=name))


def render_spark_application(settings: Settings, data_url: str, as_of: dt.date | str, *,
                             trials: int | None = None, name: str | None = None) -> dict[str, Any]:
    """The SparkApplication manifest of one training run, as a dict (see the YAML variant)."""
    import yaml

    return yaml.safe_load(render_spark_application_yaml(settings, data_url, as_of, trials=trials, name=name))


# --- local: spark-submit ----------------------------------------------------------------------------------
def spark_submit_binary() -> str:
    """``spark-submit`` next to the interpreter (the venv's pyspark), else on PATH."""
    beside = Path(sys.executable).parent / "spark-submit"
    if beside.exists():
        return str(beside)
    found = shutil.which("spark-submit")
    if not found:
        raise TrainingJobError("spark-submit not found: install the `spark` extra (pyspark)")
    return found


def local_command(settings: Settings, data_url: str, as_of: dt.date | str,
                  trials: int | None = None) -> list[str]:
    """The spark-submit command line of the local backend."""
    return [
        spark_submit_binary(), "--master", settings.spark_master,
        "--conf", "spark.sql.shuffle.partitions=4", "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.pyspark.python={sys.executable}",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
        str(job_path()), *job_arguments(data_url, as_of, trials),
    ]


def _job_environment(settings: Settings) -> dict[str, str]:
    """The caller's environment plus the resolved stores, so the job sees what these settings see."""
    env = dict(os.environ)
    env.update({
        "KPI_HOME": str(settings.home_dir),
        "KPI_STORAGE_URL": settings.resolved_storage_url,
        "MLFLOW_TRACKING_URI": settings.resolved_mlflow_uri,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    })
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if settings.database_url:
        from kpi.db import database_url

        env["KPI_DATABASE_URL"] = database_url(settings)
    if settings.s3_endpoint_url:
        env["KPI_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env


def submit_local(settings: Settings, data_url: str, as_of: dt.date, trials: int | None = None) -> dict[str, Any]:
    """Run ``job.py`` with spark-submit on ``settings.spark_master`` and return its result document."""
    from kpi.churn.sources import data_version

    version = data_version(data_url, settings)
    cmd = local_command(settings, data_url, as_of, trials)
    log.info("spark-submit: %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=_job_environment(settings), capture_output=True, text=True, check=False)
    if proc.stdout:
        log.info("training job stdout (tail):\n%s", proc.stdout[-4000:])
    if proc.returncode != 0:
        failure = job_failure(proc.returncode, proc.stdout or "", proc.stderr or "")
        log.error("training job failed: %s", failure)
        raise failure
    return {**read_training_result(settings, as_of, version), "backend": "local", "data_version": version}


# --- kubernetes without Airflow (the CLI path) -------------------------------------------------------------
def submit_kubernetes(settings: Settings, data_url: str, as_of: dt.date, trials: int | None = None,
                      timeout_s: float = 3600.0, poll_s: float = 10.0) -> dict[str, Any]:
    """Create the SparkApplication with the Kubernetes API and wait for it (outside Airflow).

    Inside Airflow the ``SparkKubernetesOperator`` task of ``churn_training`` does this instead.
    Not exercised on the build machines (no API server there); the manifest itself is schema-tested.
    """
    import time

    from kubernetes import client, config

    from kpi.churn.sources import data_version

    version = data_version(data_url, settings)
    _clear_job_error(settings, as_of, version)
    body = render_spark_application(settings, data_url, as_of, trials=trials)
    body["metadata"]["name"] = f"{body['metadata']['name']}-{os.urandom(3).hex()}"
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    group, api_version = body["apiVersion"].split("/")
    namespace = body["metadata"]["namespace"]
    api.create_namespaced_custom_object(group, api_version, namespace, "sparkapplications", body)
    deadline = time.monotonic() + timeout_s
    state = "SUBMITTED"
    while time.monotonic() < deadline:
        obj = api.get_namespaced_custom_object(group, api_version, namespace, "sparkapplications",
                                               body["metadata"]["name"])
        state = obj.get("status", {}).get("applicationState", {}).get("state", "SUBMITTED")
        if state == "COMPLETED":
            return {**read_training_result(settings, as_of, version), "backend": "kubernetes",
                    "application": body["metadata"]["name"], "data_version": version}
        if state in ("FAILED", "SUBMISSION_FAILED", "INVALIDATING"):
            where = f"SparkApplication {body['metadata']['name']} ended in state {state}"
            error = _read_job_error(settings, as_of, version)
            if error and error.get("error"):
                raise TrainingJobError(f"{error.get('error_type')}: {error['error']}\n-- {where}",
                                       job_error_type=error.get("error_type"), job_error=error["error"])
            message = obj.get("status", {}).get("applicationState", {}).get("errorMessage") or ""
            raise TrainingJobError(f"{where}: {message[:LOG_TAIL_CHARS]}".rstrip(": "))
        time.sleep(poll_s)
    raise TrainingJobError(f"SparkApplication {body['metadata']['name']} still {state} after {timeout_s:.0f}s")


def submit_training(settings: Settings, data_url: str, as_of: dt.date, trials: int | None = None) -> dict[str, Any]:
    """Run the Spark training step on the backend chosen by ``KPI_SPARK_BACKEND``.

    Args:
        settings: Platform settings; ``spark_backend`` picks ``local`` or ``kubernetes``.
        data_url: Folder or URL with the five source CSVs.
        as_of: Training date (labels up to it, features before ``as_of - 60 days``).
        trials: Hyper-parameter search trials; default ``KPI_CHURN_SEARCH_TRIALS``.

    Returns:
        The job's result document (``run_id``, ``model_version``, ``auc``, ``data_version``...) plus
        ``backend``.
    """
    if settings.spark_backend == "local":
        return submit_local(settings, data_url, as_of, trials)
    return submit_kubernetes(settings, data_url, as_of, trials)


# --- run inputs of the orchestrated pipeline --------------------------------------------------------------
def training_inputs(settings: Settings, params: dict[str, Any] | None, event_extras: list[dict[str, Any]],
                    run_date: dt.date) -> dict[str, Any]:
    """Decide ``data_url`` and ``as_of`` of a training run.

    Explicit params win; then the newest triggering asset event (the watchdog or the drift monitor put
    ``data_url`` and ``as_of`` in its extra); then ``KPI_CHURN_DATA_URL`` and the run's date.
    """
    from kpi.churn.watchdog import watched_data_url

    params = params or {}
    extra = next((e for e in reversed(event_extras) if e), {})
    data_url = params.get("data_url") or extra.get("data_url") or watched_data_url(settings)
    as_of_text = params.get("as_of") or extra.get("as_of") or run_date.isoformat()
    try:
        as_of = dt.date.fromisoformat(str(as_of_text))
    except ValueError:
        raise ValueError(f"as_of must be YYYY-MM-DD, got {as_of_text!r}") from None
    return {"data_url": str(data_url).rstrip("/"), "as_of": as_of.isoformat(),
            "trigger": "params" if params.get("as_of") or params.get("data_url") else
            ("asset" if extra else "schedule")}
