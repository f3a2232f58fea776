"""Read-only views on the platform's stores for the dashboard and the notebooks.

Every function takes the :class:`~kpi.settings.Settings` to read from and returns plain pandas / dict
values. A store that is missing or unreachable raises :class:`StoreUnavailable` whose message names the
store and says how to fix it; callers show that message instead of a stack trace.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from kpi.redaction import redact_url
from kpi.settings import Settings

__all__ = ["StoreUnavailable", "redact_url"]  # redact_url: re-exported for the notebooks

DRIFT_REPORTS_DIR = "drift-reports"


class StoreUnavailable(RuntimeError):
    """A store (warehouse, MLflow, object storage) is missing, unreachable or not initialised."""


# --------------------------------------------------------------------------------------------------------
# Warehouse
# --------------------------------------------------------------------------------------------------------


def query_frame(settings: Settings, sql: str, params: tuple | dict | None = None) -> pd.DataFrame:
    """Run one read-only query on the warehouse and return its rows as a DataFrame.

    Args:
        settings: where the warehouse is (``KPI_DATABASE_URL``).
        sql: the statement; parameters use psycopg's ``%s`` / ``%(name)s`` placeholders.
        params: the parameters.

    Raises:
        StoreUnavailable: the URL is unset, the server does not answer, or a table is missing.
    """
    import psycopg

    from kpi.db import connect

    url = settings.database_url  # a SecretUrl: connect() reads it, redact_url() prints it
    if not url:
        raise StoreUnavailable(
            "the warehouse is not configured (KPI_DATABASE_URL is unset): `task dashboard` starts the "
            "demo's embedded Postgres, or point KPI_DATABASE_URL at a running Postgres"
        )
    try:
        conn = connect(url, connect_timeout=max(1, int(settings.dashboard_connect_timeout_seconds)))
    except psycopg.OperationalError as exc:
        reason = settings.redact(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        raise StoreUnavailable(
            f"the warehouse at {redact_url(url)} is unreachable ({reason}); start it (`task dashboard` "
            "starts the demo's embedded Postgres) or fix KPI_DATABASE_URL"
        ) from exc
    try:
        with conn:
            # the dashboard only reads: a read-only transaction makes that a guarantee
            conn.read_only = True
            cur = conn.execute(sql, params)
            columns = [d.name for d in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=columns)
    except psycopg.errors.UndefinedTable as exc:
        raise StoreUnavailable(
            f"the warehouse at {redact_url(url)} lacks a table ({settings.redact(str(exc).splitlines()[0])}); "
            "run `kpi db init` (or `task demo`) to create it"
        ) from exc
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(
            f"the warehouse at {redact_url(url)} failed: {settings.redact(str(exc).strip())}") from exc


# --------------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------------


def check_mlflow(settings: Settings) -> str:
    """Fail fast with a clear message when the tracking store is missing or does not answer.

    A missing sqlite file is not created here (reading must not create stores); an HTTP server gets one
    short health probe instead of MLflow's long retry loop.

    Returns:
        The tracking URI that answered.

    Raises:
        StoreUnavailable: the store does not exist or does not answer.
    """
    uri = settings.resolved_mlflow_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.exists():
            raise StoreUnavailable(
                f"no MLflow store at {path} yet: run `task demo` (or `kpi churn train`) first, "
                "or point MLFLOW_TRACKING_URI at your tracking server"
            )
    elif uri.startswith(("http://", "https://")):
        timeout = settings.dashboard_connect_timeout_seconds
        try:
            with urllib.request.urlopen(_health_request(uri), timeout=timeout) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = settings.redact(str(getattr(exc, "reason", exc)))
            raise StoreUnavailable(
                f"MLflow at {redact_url(uri)} is unreachable ({reason}); start the tracking server or fix "
                "MLFLOW_TRACKING_URI"
            ) from exc
    return uri


def _health_request(uri: str) -> urllib.request.Request:
    """GET <uri>/health, with the URL's user and password (if any) as basic auth instead of in the URL."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri.rstrip("/") + "/health")
    if parts.username is None:
        return urllib.request.Request(urlunsplit(parts))
    host = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=host)))
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    return request


def mlflow_client(settings: Settings):
    """An ``MlflowClient`` on the settings' tracking and registry store (checked first)."""
    from mlflow import MlflowClient

    uri = check_mlflow(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _mlflow_call(what: str, settings: Settings, fn, *args, **kwargs):
    """Call into MLflow, turning store failures into :class:`StoreUnavailable` naming ``what``."""
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args, **kwargs)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise
        raise StoreUnavailable(
            f"MLflow at {redact_url(settings.resolved_mlflow_uri)} failed while reading {what}:"
            f" {settings.redact(exc.message)}"
        ) from exc


def champion_version(settings: Settings) -> str | None:
    """The version number behind the champion alias, or None when no version carries it yet.

    This is the cheap lookup the dashboard repeats on a short TTL to pick up a new champion.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    try:
        mv = client.get_model_version_by_alias(settings.churn_model_name, settings.churn_champion_alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None  # model or alias not registered yet
        raise StoreUnavailable(
            f"MLflow at {redact_url(settings.resolved_mlflow_uri)} failed while reading the champion alias:"
            f" {settings.redact(exc.message)}"
        ) from exc
    return str(mv.version)


def model_versions(settings: Settings) -> pd.DataFrame:
    """Every version of the churn model with its aliases, run metrics and promotion tags.

    Columns: ``version, created_at, run_id, aliases, is_champion`` then one column per run metric
    (``auc`` among them) and one ``tag.<name>`` column per version tag (the promotion decision and its
    figures are version tags). Sorted by version number; empty when nothing is registered.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    name = settings.churn_model_name
    try:
        versions = _mlflow_call("model versions", settings, client.search_model_versions, f"name='{name}'")
    except MlflowException:
        versions = []
    # search results carry no aliases; the registered model has them all
    by_version: dict[str, list[str]] = {}
    if versions:
        for alias, number in (client.get_registered_model(name).aliases or {}).items():
            by_version.setdefault(str(number), []).append(alias)
    rows: list[dict[str, Any]] = []
    for mv in versions:
        aliases = sorted(set(mv.aliases or []) | set(by_version.get(str(mv.version), [])))
        row: dict[str, Any] = {
            "version": int(mv.version),
            "created_at": pd.to_datetime(mv.creation_timestamp, unit="ms", utc=True),
            "run_id": mv.run_id,
            "aliases": ", ".join(aliases),
            "is_champion": settings.churn_champion_alias in aliases,
        }
        if mv.run_id:
            try:
                run = client.get_run(mv.run_id)
                row.update({k: v for k, v in sorted(run.data.metrics.items())})
            except MlflowException:
                pass  # a version whose run was deleted still lists
        row.update({f"tag.{k}": v for k, v in sorted((mv.tags or {}).items())})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["version", "created_at", "run_id", "aliases", "is_champion"])
    return pd.DataFrame(rows).sort_values("version").reset_index(drop=True)


def run_artifact_bytes(settings: Settings, run_id: str, path: str) -> bytes | None:
    """The bytes of artifact ``path`` logged on run ``run_id``, or None when the run has no such file."""
    import tempfile

    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    with tempfile.TemporaryDirectory(prefix="kpi-dash-") as tmp:
        try:
            local = client.download_artifacts(run_id, path, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            if isinstance(exc, MlflowException) and "not found" not in str(exc).lower() and \
                    getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                # any other failure is the store's, not a missing file
                raise StoreUnavailable(f"MLflow could not serve {path} of run {run_id}: {exc}") from exc
            return None
        return Path(local).read_bytes()


def global_shap(settings: Settings, run_id: str) -> dict[str, Any]:
    """The global SHAP artifacts of a model run.

    Returns:
        ``{"summary_png": bytes | None, "mean_abs_shap": DataFrame[feature, mean_abs_shap]}`` sorted by
        importance (empty frame when the run logged no table).
    """
    png = run_artifact_bytes(settings, run_id, "shap/summary.png")
    raw = run_artifact_bytes(settings, run_id, "shap/mean_abs_shap.json")
    return {"summary_png": png, "mean_abs_shap": mean_abs_shap_frame(json.loads(raw) if raw else None)}


def mean_abs_shap_frame(payload: Any) -> pd.DataFrame:
    """Normalise a ``mean_abs_shap.json`` payload (a mapping or a list of records) to a sorted frame."""
    if not payload:
        return pd.DataFrame(columns=["feature", "mean_abs_shap"])
    if isinstance(payload, dict) and "features" in payload and isinstance(payload["features"], (list, dict)):
        payload = payload["features"]
    if isinstance(payload, dict):
        frame = pd.DataFrame({"feature": list(payload), "mean_abs_shap": [float(v) for v in payload.values()]})
    else:
        frame = pd.DataFrame(payload)
        value_col = next(c for c in frame.columns if c != "feature")
        frame = frame.rename(columns={value_col: "mean_abs_shap"})[["feature", "mean_abs_shap"]]
    return frame.sort_values("mean_abs_shap", ascending=False).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------
# Object storage: drift reports
# --------------------------------------------------------------------------------------------------------


def _storage_fs(settings: Settings, url: str):
    """fsspec filesystem for ``url`` that gives up quickly when an S3 endpoint does not answer."""
    import fsspec

    options = dict(settings.storage_options(url))
    if url.startswith("s3://"):
        # botocore's defaults retry a dead endpoint for minutes; a page must answer in seconds
        timeout = settings.dashboard_connect_timeout_seconds
        options["config_kwargs"] = {"connect_timeout": timeout, "read_timeout": 30,
                                    "retries": {"max_attempts": 1}}
    return fsspec.core.url_to_fs(url, **options)


def drift_report_urls(settings: Settings) -> dict[str, dict[str, str]]:
    """Drift reports under ``<storage>/drift-reports/``: ``{as_of: {"html": url, "json": url}}``, sorted."""
    base = f"{settings.resolved_storage_url}/{DRIFT_REPORTS_DIR}"
    try:
        fs, path = _storage_fs(settings, base)
        entries = fs.ls(path, detail=False) if fs.exists(path) else []
    except Exception as exc:  # fsspec backends raise their own error types
        raise StoreUnavailable(f"object storage at {settings.resolved_storage_url} is unreachable:"
                               f" {settings.redact(str(exc))}") from exc
    scheme = base.split("://", 1)[0]
    reports: dict[str, dict[str, str]] = {}
    for entry in entries:
        name = str(entry).rstrip("/").rsplit("/", 1)[-1]
        stem, _, ext = name.rpartition(".")
        if ext in ("html", "json") and stem:
            full = str(entry)
            reports.setdefault(stem, {})[ext] = full if "://" in full else f"{scheme}://{full}"
    return dict(sorted(reports.items()))


def read_storage_bytes(settings: Settings, url: str) -> bytes:
    """Bytes of one object; :class:`StoreUnavailable` when storage does not answer."""
    try:
        fs, path = _storage_fs(settings, url)
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise StoreUnavailable(f"object storage could not serve {url}: {settings.redact(str(exc))}") from exc


def drift_history(settings: Settings) -> pd.DataFrame:
    """Drift share over time from the JSON summaries next to the HTML reports.

    Columns: ``as_of, drift_share, drift_detected, drifted_features, report_url``; one row per report.
    """
    rows = []
    for as_of, files in drift_report_urls(settings).items():
        if "json" not in files:
            continue
        try:
            payload = json.loads(read_storage_bytes(settings, files["json"]))
        except (ValueError, FileNotFoundError):
            continue  # a half-written or foreign JSON file does not break the chart
        summary = drift_summary(payload)
        rows.append({"as_of": as_of, **summary, "report_url": files.get("html")})
    frame = pd.DataFrame(rows, columns=["as_of", "drift_share", "drift_detected", "drifted_features",
                                        "report_url"])
    frame["as_of"] = pd.to_datetime(frame["as_of"], errors="coerce")
    return frame.sort_values("as_of").reset_index(drop=True)


def drift_summary(payload: dict) -> dict[str, Any]:
    """``drift_share``, ``drift_detected`` and ``drifted_features`` from a drift JSON summary."""
    share = payload.get("drift_share")
    detected = payload.get("drift_detected")
    drifted = payload.get("n_drifted_columns")
    if drifted is None and isinstance(payload.get("drifted_columns"), (list, tuple)):
        drifted = len(payload["drifted_columns"])
    return {
        "drift_share": float(share) if share is not None else None,
        "drift_detected": bool(detected) if detected is not None else None,
        "drifted_features": drifted,
    }


def latest_drift_report(settings: Settings) -> tuple[str, str] | None:
    """``(as_of, html)`` of the newest Evidently HTML report, or None when none was written yet."""
    reports = {k: v for k, v in drift_report_urls(settings).items() if "html" in v}
    if not reports:
        return None
    as_of = max(reports)
    return as_of, read_storage_bytes(settings, reports[as_of]["html"]).decode("utf-8")


# --------------------------------------------------------------------------------------------------------
# Churn scores delivered to the warehouse (prod.churn_scores, written by the churn_scoring DAG)
# --------------------------------------------------------------------------------------------------------


def churn_score_of_user(settings: Settings, user_id: int) -> dict[str, Any] | None:
    """The latest delivered score of one customer, or None when none was delivered.

    Returns:
        ``user_id, as_of, p_active_60d, model_name, model_version, scored_at`` and ``features`` (the model's
        input as scored, feature name -> value).
    """
    frame = query_frame(
        settings,
        "SELECT user_id, as_of, p_active_60d, model_name, model_version, scored_at, features "
        "FROM prod.churn_scores WHERE user_id = %s ORDER BY as_of DESC LIMIT 1",
        (int(user_id),),
    )
    return None if frame.empty else frame.iloc[0].to_dict()


def churn_score_distribution(settings: Settings, days: int = 90) -> pd.DataFrame:
    """Quantiles of the delivered ``p_active_60d`` per as-of date (the last ``days`` dates).

    Columns ``as_of, users, mean, p10, p25, p50, p75, p90, model_versions`` sorted by date.
    """
    frame = query_frame(
        settings,
        "SELECT as_of, count(*)::bigint AS users, avg(p_active_60d) AS mean, "
        "percentile_cont(ARRAY[0.1, 0.25, 0.5, 0.75, 0.9]) WITHIN GROUP (ORDER BY p_active_60d) AS q, "
        "string_agg(DISTINCT model_version::text, ', ') AS model_versions "
        "FROM prod.churn_scores WHERE as_of > (SELECT max(as_of) FROM prod.churn_scores) - %s "
        "GROUP BY as_of ORDER BY as_of",
        (days,),
    )
    quantiles = pd.DataFrame(frame["q"].tolist(), columns=["p10", "p25", "p50", "p75", "p90"], index=frame.index)
    return pd.concat([frame.drop(columns="q"), quantiles], axis=1)[
        ["as_of", "users", "mean", "p10", "p25", "p50", "p75", "p90", "model_versions"]]


def churn_risk_bands(settings: Settings, days: int = 90) -> pd.DataFrame:
    """Users per churn risk band (:data:`kpi.churn.delivery.RISK_BANDS` on ``p_active_60d``) per as-of date.

    Columns ``as_of, band, users, share`` (share of that date's users), bands in risk order.
    """
    from kpi.churn.delivery import RISK_BANDS

    (high, _, high_upper), (medium, _, medium_upper), (low, _, _) = RISK_BANDS
    frame = query_frame(
        settings,
        "SELECT as_of, CASE WHEN p_active_60d < %(high)s THEN %(h)s WHEN p_active_60d < %(medium)s THEN %(m)s "
        "ELSE %(l)s END AS band, count(*)::bigint AS users FROM prod.churn_scores "
        "WHERE as_of > (SELECT max(as_of) FROM prod.churn_scores) - %(days)s GROUP BY 1, 2 ORDER BY 1, 2",
        {"high": high_upper, "medium": medium_upper, "h": high, "m": medium, "l": low, "days": days},
    )
    if frame.empty:
        return frame.assign(share=pd.Series(dtype=float))
    frame["share"] = frame["users"] / frame.groupby("as_of")["users"].transform("sum")
    order = {name: i for i, (name, _, _) in enumerate(RISK_BANDS)}
    return frame.sort_values(["as_of", "band"], key=lambda s: s.map(order) if s.name == "band" else s
                             ).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------
# Crypto data quality (dqm schema)
# --------------------------------------------------------------------------------------------------------

# What a run came to, in words: a reaped run is a failed one that a later run found abandoned; an unfinished
# run that no step touched for longer than KPI_CRYPTO_ORPHAN_MINUTES is stalled (the next stage reaps it).
DQ_RUN_OUTCOME = (
    "CASE WHEN reaped_by IS NOT NULL THEN 'reaped' "
    "WHEN status = 'failed' THEN 'failed' "
    "WHEN status = 'gate_failed' THEN 'gate failed' "
    "WHEN status = 'published' THEN 'published' "
    "WHEN coalesce(last_step_at, started_at) < now() - make_interval(mins => %(orphan_minutes)s) THEN 'stalled' "
    "ELSE 'running' END"
)
DQ_RUN_COLUMNS = (
    f"run_id, logical_date, {DQ_RUN_OUTCOME} AS outcome, status, last_step, window_start, window_end, gate, "
    "gate_reason, raw_rows, valid, published, quarantined, superseded, inserted, updated, deactivated, "
    "would_deactivate, reject_share, reject_threshold, validation, started_at, finished_at, last_step_at, error, "
    "reaped_by"
)


def crypto_dq_runs(settings: Settings, limit: int = 30) -> pd.DataFrame:
    """The last ``limit`` runs of the crypto pipeline, newest first, with what each came to (``outcome``:
    published, gate failed, failed, reaped, stalled or running), its last step and its error."""
    return query_frame(
        settings,
        f"SELECT {DQ_RUN_COLUMNS} FROM dqm.dq_runs WHERE pipeline = 'crypto_events' "
        "ORDER BY started_at DESC, run_id DESC LIMIT %(limit)s",
        {"limit": limit, "orphan_minutes": settings.crypto_orphan_minutes},
    )


def crypto_gate_results(settings: Settings) -> pd.DataFrame:
    """The latest run per logical date: reject share against the threshold and what the run came to."""
    return query_frame(
        settings,
        f"SELECT DISTINCT ON (logical_date) logical_date, run_id, status, gate, {DQ_RUN_OUTCOME} AS outcome, "
        "reject_share, reject_threshold FROM dqm.dq_runs WHERE pipeline = 'crypto_events' "
        "ORDER BY logical_date, started_at DESC, run_id DESC",
        {"orphan_minutes": settings.crypto_orphan_minutes},
    )


def crypto_rejects_per_reason_day(settings: Settings, days: int | None = None) -> pd.DataFrame:
    """Rejected raw rows per reason per logical date of the run that rejected them.

    Args:
        settings: where the warehouse is.
        days: only the last ``days`` logical dates present (all when None).

    Returns:
        Columns ``day, reason, rejects`` sorted by day then reason.
    """
    sql = ("SELECT logical_date AS day, reason, count(*)::bigint AS rejects "
           "FROM dqm.bt_crypto_events_rejects {where} GROUP BY 1, 2 ORDER BY 1, 2")
    if days is None:
        return query_frame(settings, sql.format(where=""))
    return query_frame(
        settings,
        sql.format(where="WHERE logical_date > (SELECT max(logical_date) FROM dqm.bt_crypto_events_rejects) - %s"),
        (days,),
    )


def crypto_reject_examples(settings: Settings, reason: str | None = None, limit: int = 50) -> pd.DataFrame:
    """Some rejected rows as received (optionally of one reason), newest first, for a closer look."""
    where, params = ("WHERE reason = %s", (reason, limit)) if reason else ("", (limit,))
    return query_frame(
        settings,
        "SELECT logical_date, reason, reasons, source, line_no, site_id, user_id, purchase_date, crypto_type, "
        f"purchase_price, purchase_units, raw_line FROM dqm.bt_crypto_events_rejects {where} "
        "ORDER BY logical_date DESC, raw_id DESC LIMIT %s",
        params,
    )
