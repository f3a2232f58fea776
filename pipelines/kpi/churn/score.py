"""Batch scoring with the champion: every user of the sources as of a date (``kpi churn score``)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpi.settings import Settings


class NoChampionError(RuntimeError):
    """There is no version with the champion alias to score with."""


class ScoringError(RuntimeError):
    """Scoring cannot give every user a probability (nobody to score, or a model that returns no number)."""


def require_probabilities(ids, probabilities) -> None:
    """Refuse a scoring in which any user has no finite probability (nothing partial is ever written).

    Raises:
        ScoringError: naming how many users and a few of their ids.
    """
    import numpy as np

    p = np.asarray(probabilities, dtype="float64")
    empty = ~np.isfinite(p)
    if empty.any():
        examples = [int(i) for i in np.asarray(ids)[empty][:5]]
        raise ScoringError(f"{int(empty.sum())} of {len(p)} users got no probability (e.g. ids {examples});"
                           " nothing was written")


@dataclass
class Scores:
    """Every user of the sources scored by the champion as of a date.

    Attributes:
        frame: ``CUS_CUST_ID_BUY``, the model's feature columns and ``p_active_60d``, sorted by user.
        champion: the :class:`~kpi.churn.registry.Champion` that scored them.
        validated: the validated sources (data version, quality summary).
        engine: ``pandas`` or ``spark``, how the features were built.
    """

    frame: Any
    champion: Any
    validated: Any
    engine: str


def champion_scores(settings: Settings, data_url: str, as_of: dt.date, engine: str = "spark", spark=None) -> Scores:
    """Score every user of the sources at ``as_of`` with the champion: the scoring of ``kpi churn score`` and of
    the daily ``churn_scoring`` delivery.

    The sources go through the same validation as training (bad rows left out and recorded, the gate of
    ``KPI_CHURN_MAX_BAD_ROW_SHARE``); features come from data strictly before ``as_of`` (Spark,
    :func:`kpi.churn.features.scoring_set_spark`, or its pandas twin); the probabilities come from the
    JVM-free :class:`kpi.churn.model.ChurnModel`. Every user of the (validated) user base gets a finite
    probability, or :class:`ScoringError` is raised.

    Args:
        settings: platform settings (MLflow store, Spark master, storage options).
        data_url: folder or URL of the five source CSVs.
        as_of: scoring date.
        engine: ``spark``, ``pandas`` or ``auto`` (pandas for small sources).
        spark: a SparkSession for the Spark engine (default: the active one or a local one).

    Raises:
        NoChampionError: when no model holds the champion alias yet.
        SourceValidationError: when the sources are unusable (structure, too many bad rows, no users).
        ScoringError: when there is nobody to score or a user would get no probability.
    """
    from kpi.churn import features, registry, sources
    from kpi.churn.model import PREDICTION_COLUMN
    from kpi.churn.validate import ensure_valid_sources

    champion = registry.load_champion(settings)
    if champion is None:
        raise NoChampionError(
            f"no '{settings.churn_champion_alias}' version of '{settings.churn_model_name}': run `kpi churn train` first"
        )
    validated = ensure_valid_sources(data_url, settings)
    engine = sources.feature_engine(settings, validated.data_url, engine)
    if engine == "pandas":
        frame = features.scoring_set_pandas(validated, as_of, settings)
    else:
        from kpi.churn.train import spark_session

        spark = spark or spark_session(settings, app_name="kpi-churn-scoring")
        frame = features.scoring_set_spark(spark, validated, as_of, settings).toPandas()
    if frame.empty:
        raise ScoringError(f"no user to score: the user base of {data_url} is empty")
    probabilities = champion.model.predict_proba(frame)
    require_probabilities(frame[sources.ID], probabilities)
    frame = frame.assign(**{PREDICTION_COLUMN: probabilities})
    frame = frame.sort_values(sources.ID, kind="stable").reset_index(drop=True)
    return Scores(frame=frame, champion=champion, validated=validated, engine=engine)


def score_users(settings: Settings, data_url: str, as_of: dt.date, output: str, spark=None) -> dict[str, Any]:
    """Score every user of the sources at ``as_of`` with the champion and write ``ID, p_active_60d`` as CSV.

    The scoring is :func:`champion_scores` with Spark features; every user of the (validated) user base gets
    a finite probability, or nothing is written.

    Args:
        settings: platform settings (MLflow store, Spark master, storage options).
        data_url: folder or URL of the five source CSVs.
        as_of: scoring date.
        output: a local path or a file:// / s3:// URL for the CSV.
        spark: a SparkSession (default: the active one or a local one).

    Returns:
        ``output, rows, model_version, mean_p_active_60d, as_of, seconds`` and ``source_validation`` (bad
        rows per file and rule, where they are recorded).

    Raises:
        NoChampionError: when no model holds the champion alias yet.
        SourceValidationError: when the sources are unusable (structure, too many bad rows, no users).
        ScoringError: when there is nobody to score or a user would get no probability.
    """
    from kpi import storage
    from kpi.churn import sources
    from kpi.churn.model import PREDICTION_COLUMN
    from kpi.churn.validate import quality_report

    started = time.perf_counter()
    scores = champion_scores(settings, data_url, as_of, engine="spark", spark=spark)
    scored = scores.frame[[sources.ID, PREDICTION_COLUMN]]
    csv = scored.to_csv(index=False).encode("utf-8")
    if "://" in output:
        storage.write_bytes(output, csv, settings)
    else:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(csv)
    return {
        "output": output,
        "rows": len(scored),
        "model_version": scores.champion.version,
        "model_run_id": scores.champion.run_id,
        "mean_p_active_60d": float(scored[PREDICTION_COLUMN].mean()) if len(scored) else None,
        "as_of": as_of.isoformat(),
        "source_validation": quality_report(scores.validated.summary),
        "seconds": round(time.perf_counter() - started, 2),
    }
