"""Data drift between the champion's training features and the features of the latest real data.

The reference is the feature table the champion was trained on (artifact ``reference/features.parquet`` of
its MLflow run); the current data is the feature table built from the sources as of the monitoring date,
with the same feature code as training. Evidently 0.7 compares them column by column (its defaults: K-S /
chi-square p-values up to 1,000 rows, normed Wasserstein / Jensen-Shannon distances above); the share of
drifted columns decides whether retraining is due. Reports land in object storage as HTML and JSON; the
figures go to the MLflow experiment ``churn-monitoring``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kpi import storage
from kpi.churn.sources import PANDAS_MAX_SOURCE_BYTES, feature_engine  # noqa: F401 - the threshold, shared with scoring
from kpi.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MONITORING_EXPERIMENT = "churn-monitoring"
REPORTS_PREFIX = "drift-reports"


class DriftInputError(ValueError):
    """The reference or current features cannot be compared (missing champion, no common columns...)."""


class NoChampionError(DriftInputError):
    """No champion model yet, so there is no reference to compare against (a schedule may skip)."""


@dataclass
class DriftComparison:
    """Result of one Evidently comparison: the summary figures and the snapshot that renders the report."""

    summary: dict[str, Any]
    snapshot: Any = field(repr=False)

    @property
    def drift_detected(self) -> bool:
        return bool(self.summary["drift_detected"])

    @property
    def drift_share(self) -> float:
        return float(self.summary["drift_share"])


def compare_features(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    threshold: float,
    numerical: list[str] | None = None,
    categorical: list[str] | None = None,
    sample_rows: int | None = 50_000,
    seed: int = 42,
) -> DriftComparison:
    """Compare two feature tables with Evidently's ``DataDriftPreset``.

    Args:
        reference: Features the model was trained on.
        current: Features of the data being monitored.
        threshold: Share of drifted columns at or above which drift is detected (Evidently's dataset rule).
        numerical: Numerical feature columns; default: the numeric columns both frames share.
        categorical: Categorical feature columns; default: the other shared columns.
        sample_rows: Rows sampled from each side (with ``seed``) to bound the cost; ``None`` keeps all.
        seed: Seed of the sampling.

    Returns:
        The summary (``drift_detected``, ``drift_share``, ``drifted_columns``, per-column scores) and the
        Evidently snapshot.

    Raises:
        DriftInputError: When a frame is empty or the frames share no feature column.
    """
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if reference.empty or current.empty:
        raise DriftInputError(
            f"cannot compare empty features: reference has {len(reference)} rows, current {len(current)}"
        )
    if numerical is None and categorical is None:
        shared = [c for c in reference.columns if c in current.columns]
        numerical = [c for c in shared if pd.api.types.is_numeric_dtype(reference[c])]
        categorical = [c for c in shared if c not in numerical]
    numerical = [c for c in (numerical or []) if c in reference.columns and c in current.columns]
    categorical = [c for c in (categorical or []) if c in reference.columns and c in current.columns]
    columns = numerical + categorical
    if not columns:
        raise DriftInputError(
            "reference and current features share no feature column: "
            f"reference={list(reference.columns)[:10]}, current={list(current.columns)[:10]}"
        )

    def prepare(frame: pd.DataFrame) -> pd.DataFrame:
        if sample_rows is not None and len(frame) > sample_rows:
            frame = frame.sample(n=sample_rows, random_state=seed)
        out = frame[columns].copy()
        for col in numerical:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
        for col in categorical:
            out[col] = out[col].astype("object").where(out[col].notna(), None)
        return out.reset_index(drop=True)

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    ref_ds = Dataset.from_pandas(prepare(reference), data_definition=definition)
    cur_ds = Dataset.from_pandas(prepare(current), data_definition=definition)
    report = Report([DataDriftPreset(columns=columns, drift_share=threshold)], include_tests=True)
    snapshot = report.run(current_data=cur_ds, reference_data=ref_ds)
    return DriftComparison(summary=_summarize(snapshot.dict(), threshold, len(reference), len(current)),
                           snapshot=snapshot)


def _summarize(snapshot: dict, threshold: float, reference_rows: int, current_rows: int) -> dict[str, Any]:
    """Pull the dataset-level share and the per-column verdicts out of an Evidently snapshot dict."""
    per_column: dict[str, dict[str, Any]] = {}
    drift_share = None
    drifted_count = None
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        kind = config.get("type", "")
        if kind.endswith("DriftedColumnsCount"):
            drift_share = float(metric["value"]["share"])
            drifted_count = int(metric["value"]["count"])
        elif kind.endswith("ValueDrift"):
            per_column[config["column"]] = {
                "method": config.get("method"),
                "threshold": config.get("threshold"),
                "score": float(metric["value"]),
                "drifted": False,
            }
    # Evidently decides each column's verdict (p-value below or distance at/above its threshold): read it.
    for test in snapshot.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        column = params.get("column")
        if column in per_column and params.get("type", "").endswith("ValueDrift"):
            per_column[column]["drifted"] = test.get("status") == "FAIL"
    if drift_share is None:
        raise DriftInputError("Evidently returned no DriftedColumnsCount metric")
    drifted = sorted(c for c, v in per_column.items() if v["drifted"])
    return {
        "drift_detected": drift_share >= threshold,
        "drift_share": drift_share,
        "threshold": threshold,
        "n_columns": len(per_column),
        "n_drifted_columns": drifted_count,
        "drifted_columns": drifted,
        "columns": per_column,
        "reference_rows": reference_rows,
        "current_rows": current_rows,
    }


def report_urls(settings: Settings, as_of: dt.date) -> dict[str, str]:
    """Where the reports of ``as_of`` live: ``<storage>/drift-reports/<as_of>.html`` and ``.json``."""
    base = storage.join(settings.resolved_storage_url, REPORTS_PREFIX, as_of.isoformat())
    return {"html": f"{base}.html", "json": f"{base}.json"}


def write_reports(settings: Settings, comparison: DriftComparison, as_of: dt.date,
                  context: dict[str, Any] | None = None) -> dict[str, str]:
    """Write the HTML report and the JSON (summary + Evidently snapshot) to storage; return their URLs."""
    urls = report_urls(settings, as_of)
    html = comparison.snapshot.get_html_str(as_iframe=False)
    document = {**(context or {}), **comparison.summary, "evidently": comparison.snapshot.dict()}
    storage.write_text(urls["html"], html, settings)
    storage.write_text(urls["json"], json.dumps(document, indent=2, default=str), settings)
    return urls


def log_to_mlflow(settings: Settings, summary: dict[str, Any], context: dict[str, Any]) -> str:
    """Record drift share and detection in the ``churn-monitoring`` experiment; return the run id."""
    from mlflow import MlflowClient

    uri = settings.resolved_mlflow_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        # a local store would otherwise put artifacts under ./mlruns of whatever the current directory is
        local = uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri
        location = (settings.home_dir / "mlartifacts" / MONITORING_EXPERIMENT).as_uri() if local else None
        experiment_id = client.create_experiment(MONITORING_EXPERIMENT, artifact_location=location)
    run = client.create_run(
        experiment_id,
        run_name=f"drift-{context['as_of']}",
        tags={"kpi.kind": "drift", "kpi.as_of": str(context["as_of"]),
              "kpi.report_url": context.get("report_url", ""),
              "kpi.champion_version": str(context.get("champion_version", "")),
              "kpi.data_version": str(context.get("data_version", ""))},
    )
    run_id = run.info.run_id
    try:
        client.log_param(run_id, "data_url", context.get("data_url", ""))
        client.log_param(run_id, "threshold", summary["threshold"])
        client.log_param(run_id, "engine", context.get("engine", ""))
        client.log_metric(run_id, "drift_share", summary["drift_share"])
        client.log_metric(run_id, "drift_detected", float(summary["drift_detected"]))
        client.log_metric(run_id, "n_drifted_columns", float(summary["n_drifted_columns"] or 0))
        quality = context.get("source_validation") or {}
        if quality.get("rows") is not None:
            client.log_metric(run_id, "source_rows", float(quality["rows"]))
            client.log_metric(run_id, "source_bad_rows", float(quality["bad_rows"]))
        for column, info in summary["columns"].items():
            client.log_metric(run_id, f"drift_score.{column}", info["score"])
        client.log_dict(run_id, {k: v for k, v in summary.items()}, "drift/summary.json")
        client.set_terminated(run_id)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    return run_id


def load_reference_features(settings: Settings) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The champion's training features and a description of the champion.

    Raises:
        NoChampionError: When there is no champion yet.
        DriftInputError: When the champion carries no reference features.
    """
    import mlflow
    import pandas as pd

    from kpi.churn.registry import load_champion

    champion = load_champion(settings)
    if champion is None:
        raise NoChampionError(
            f"no '{settings.churn_champion_alias}' version of '{settings.churn_model_name}' yet: "
            "train a model first (kpi churn train) so drift has a reference"
        )
    uri = getattr(champion, "reference_features_uri", None)
    if not uri:
        raise DriftInputError(f"champion version {champion.version} has no reference features artifact")
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=settings.resolved_mlflow_uri)
    frame = pd.read_parquet(local)
    return frame, {"champion_version": str(champion.version), "champion_run_id": champion.run_id,
                   "reference_features_uri": uri}


def current_features(settings: Settings, data_url, as_of: dt.date,
                     engine: str = "auto") -> tuple[pd.DataFrame, str]:
    """Features as of ``as_of`` (data strictly before it) of the users eligible then, and the engine used.

    Like with like: the current side follows the training population's eligibility rule (users known
    before ``as_of``: a payment, or a dated snapshot row), as the reference followed it at the champion's
    cutoff; users who joined and left no trace yet are on neither side. The sources are validated first
    (the same validation and gate as training). ``data_url`` may be a
    :class:`~kpi.churn.validate.ValidatedSources`. ``engine`` ``auto`` uses pandas for small sources and
    Spark above ``PANDAS_MAX_SOURCE_BYTES``.
    """
    from kpi.churn import features
    from kpi.churn.validate import ValidatedSources, ensure_valid_sources

    validated = data_url if isinstance(data_url, ValidatedSources) else ensure_valid_sources(data_url, settings)
    engine = feature_engine(settings, validated.data_url, engine)
    if engine == "pandas":
        return features.monitoring_set_pandas(validated, as_of, settings), engine
    if engine != "spark":
        raise DriftInputError(f"unknown feature engine {engine!r}: use auto, pandas or spark")
    from kpi.churn.train import spark_session

    spark = spark_session(settings, app_name="kpi-churn-drift")
    return features.monitoring_set_spark(spark, validated, as_of, settings).toPandas(), engine


def run_drift(settings: Settings, data_url: str, as_of: dt.date, engine: str = "auto") -> dict[str, Any]:
    """Compare the champion's training features with the features of ``data_url`` as of ``as_of``.

    Writes ``drift-reports/<as_of>.html`` and ``.json`` under ``KPI_STORAGE_URL`` and logs the figures to
    the MLflow experiment ``churn-monitoring``.

    Args:
        settings: Platform settings (storage, MLflow, ``churn_drift_threshold``).
        data_url: Folder or URL with the five source CSVs.
        as_of: Monitoring date; features use data strictly before it.
        engine: ``auto``, ``pandas`` or ``spark`` for the current features.

    Returns:
        ``drift_detected``, ``drift_share``, ``threshold``, ``drifted_columns``, ``report_url``,
        ``json_url``, ``mlflow_run_id`` and the champion it compared against.
    """
    from kpi.churn.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
    from kpi.churn.validate import ensure_valid_sources, quality_report

    # The sources are validated first (a missing file or too many bad rows fail here, naming the file).
    validated = ensure_valid_sources(data_url, settings)
    version = validated.data_version
    reference, champion = load_reference_features(settings)
    current, used_engine = current_features(settings, validated, as_of, engine)
    # the features the champion was trained on (its reference holds only those)
    comparison = compare_features(
        reference, current, threshold=settings.churn_drift_threshold,
        numerical=[c for c in NUMERIC_FEATURES if c in reference.columns],
        categorical=[c for c in CATEGORICAL_FEATURES if c in reference.columns], seed=settings.churn_seed,
    )
    urls = report_urls(settings, as_of)
    context = {"as_of": as_of.isoformat(), "data_url": data_url, "data_version": version,
               "engine": used_engine, "report_url": urls["html"], "population": "users known before as_of",
               "source_validation": quality_report(validated.summary), **champion}
    write_reports(settings, comparison, as_of, context)
    run_id = log_to_mlflow(settings, comparison.summary, context)
    summary = comparison.summary
    log.info("drift as of %s: share %.3f (threshold %.2f) detected=%s", as_of, summary["drift_share"],
             summary["threshold"], summary["drift_detected"])
    return {
        "as_of": as_of.isoformat(),
        "drift_detected": summary["drift_detected"],
        "drift_share": summary["drift_share"],
        "threshold": summary["threshold"],
        "drifted_columns": summary["drifted_columns"],
        "n_columns": summary["n_columns"],
        "report_url": urls["html"],
        "json_url": urls["json"],
        "mlflow_run_id": run_id,
        "engine": used_engine,
        "data_version": context["data_version"],
        "current_rows": summary["current_rows"],
        "source_validation": context["source_validation"],
        **champion,
    }
