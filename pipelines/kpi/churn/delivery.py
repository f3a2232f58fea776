"""Churn scores delivered to the warehouse: ``prod.churn_scores``, one row per user per as-of date.

The ``churn_scoring`` DAG (daily, and after each promotion) and ``kpi churn deliver`` call
:func:`deliver_scores`, which scores the user base with the champion through the same code as
``kpi churn score`` (:func:`kpi.churn.score.champion_scores`) and merges the result into the table for its
as-of date in one transaction: a row changes only when its score, model, data version or features change,
so a rerun of a date changes nothing, a promotion rewrites the date with the new version, and users who
left the user base are removed from it. Each row keeps the features it was scored from, which the
dashboard explains with SHAP. Every delivery is recorded in ``dqm.churn_scoring_runs``.

The statements live in ``sql/churn/``; the table in ``sql/init/020_churn_scores.sql``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from functools import cache
from pathlib import Path
from typing import Any

from kpi.settings import Settings

TABLE = "prod.churn_scores"
# churn risk bands on p_active_60d (the probability of a payment in the next 60 days): (band, lower, upper)
RISK_BANDS = (("high", 0.0, 0.3), ("medium", 0.3, 0.6), ("low", 0.6, 1.0))
TRIGGERS = ("schedule", "promotion", "params")


@cache
def sql_statement(name: str, sql_dir: str) -> str:
    """Text of ``sql/churn/<name>.sql``."""
    return (Path(sql_dir) / "churn" / f"{name}.sql").read_text()


def _sql(name: str, settings: Settings) -> str:
    return sql_statement(name, str(settings.resolved_sql_dir))


def latest_delivered_as_of(settings: Settings) -> dt.date | None:
    """The newest as-of date in ``prod.churn_scores`` (None when nothing was delivered yet)."""
    from kpi.db import connect, database_url, ensure_schema

    ensure_schema(database_url(settings), settings)
    with connect(database_url(settings)) as conn:
        return conn.execute(f"SELECT max(as_of) FROM {TABLE}").fetchone()[0]


def scoring_inputs(settings: Settings, params: dict[str, Any] | None, event_extras: list[dict[str, Any]],
                   run_date: dt.date, latest_delivered: dt.date | None) -> dict[str, Any]:
    """Decide ``data_url``, ``as_of`` and ``trigger`` of a delivery.

    - ``params.as_of`` wins (``trigger: params``).
    - A promotion (a ``churn_champion`` asset event, or ``params.rescore_latest``) rescores the latest
      delivered date with the new champion; with nothing delivered yet, the promoted model's training
      date (the event's ``as_of``), else the run's date (``trigger: promotion``).
    - Otherwise the run's date: the daily schedule (``trigger: schedule``).

    ``data_url``: ``params.data_url``, else the newest event's, else ``KPI_CHURN_DATA_URL``.

    Raises:
        ValueError: an ``as_of`` that is not YYYY-MM-DD.
    """
    from kpi.churn.watchdog import watched_data_url

    params = params or {}
    extra = next((e for e in reversed(event_extras) if e), {})
    data_url = params.get("data_url") or extra.get("data_url") or watched_data_url(settings)
    if params.get("as_of"):
        trigger, as_of_text = "params", params["as_of"]
    elif event_extras or params.get("rescore_latest"):
        trigger = "promotion"
        as_of_text = latest_delivered.isoformat() if latest_delivered else (extra.get("as_of") or run_date.isoformat())
    else:
        trigger, as_of_text = "schedule", run_date.isoformat()
    try:
        as_of = dt.date.fromisoformat(str(as_of_text))
    except ValueError:
        raise ValueError(f"as_of must be YYYY-MM-DD, got {as_of_text!r}") from None
    return {"data_url": str(data_url).rstrip("/"), "as_of": as_of.isoformat(), "trigger": trigger}


def promotion_event(decision: dict[str, Any], training: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The extra of a ``churn_champion`` asset event for a promotion result, or None when the alias did not move.

    Args:
        decision: what :func:`kpi.churn.registry.evaluate_and_promote` returned.
        training: the training run's inputs (``data_url``, ``as_of``), passed on to the scoring run.
    """
    if decision.get("decision") != "promoted":
        return None
    training = training or {}
    return {"model_version": int(decision["model_version"]), "previous_version": decision.get("compared_with_version"),
            "data_url": training.get("data_url"), "as_of": training.get("as_of")}


def _feature_json(frame, names: list[str]) -> list[str]:
    """One JSON object per row with the model's input (NaN as null, 15 significant digits: what pandas keeps)."""
    if not len(frame):
        return []
    return frame[names].to_json(orient="records", lines=True, double_precision=15).splitlines()


def deliver_scores(settings: Settings, data_url: str, as_of: dt.date, *, trigger: str = "params",
                   run_id: str | None = None, engine: str | None = None) -> dict[str, Any]:
    """Score every user of the sources at ``as_of`` with the champion and merge the scores into
    ``prod.churn_scores`` for that date (idempotent; one transaction).

    Args:
        settings: platform settings (warehouse, MLflow, storage, ``KPI_CHURN_SCORING_ENGINE``).
        data_url: folder or URL of the five source CSVs.
        as_of: the scoring date (features use data strictly before it).
        trigger: why this delivery runs (schedule, promotion, params), recorded with it.
        run_id: the run's id (the Airflow run id in the DAG); default a new ``manual__...`` id.
        engine: how features are built (default ``KPI_CHURN_SCORING_ENGINE``).

    Returns:
        ``as_of, users, inserted, updated, deleted, model_name, model_version, data_version, engine, trigger,
        run_id, mean_p_active_60d, seconds``.

    Raises:
        NoChampionError, SourceValidationError, ScoringError: see :func:`kpi.churn.score.champion_scores`.
        ValueError: an unknown ``trigger``.
    """
    from kpi.churn.model import PREDICTION_COLUMN
    from kpi.churn.score import champion_scores
    from kpi.churn.sources import ID
    from kpi.db import connect, database_url, ensure_schema

    if trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}: one of {', '.join(TRIGGERS)}")
    started_at = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    run_id = run_id or f"manual__{as_of.isoformat()}__{uuid.uuid4().hex[:8]}"
    scores = champion_scores(settings, data_url, as_of, engine=engine or settings.churn_scoring_engine)
    frame, champion = scores.frame, scores.champion
    users = frame[ID].astype("int64").to_numpy()
    probabilities = frame[PREDICTION_COLUMN].to_numpy(dtype="float64")
    features = _feature_json(frame, list(champion.model.feature_names))
    params = {"as_of": as_of, "model_name": champion.name, "model_version": int(champion.version),
              "data_version": scores.validated.data_version, "scored_at": dt.datetime.now(dt.UTC)}
    url = database_url(settings)
    ensure_schema(url, settings)
    with connect(url) as conn:
        # two deliveries of one date (a retry and a promotion) take turns instead of interleaving
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('kpi-churn-scores'), %s)", (as_of.toordinal(),))
        conn.execute(_sql("scores_in", settings))
        with conn.cursor().copy("COPY churn_scores_in (user_id, p_active_60d, features) FROM STDIN") as copy:
            for row in zip(users.tolist(), probabilities.tolist(), features, strict=True):
                copy.write_row(row)
        inserted, updated = conn.execute(_sql("upsert_scores", settings), params).fetchone()
        (deleted,) = conn.execute(_sql("delete_stale_scores", settings), params).fetchone()
        summary = {"as_of": as_of.isoformat(), "users": len(users), "inserted": int(inserted),
                   "updated": int(updated), "deleted": int(deleted), "model_name": champion.name,
                   "model_version": int(champion.version), "data_version": scores.validated.data_version,
                   "engine": scores.engine, "trigger": trigger, "run_id": run_id}
        conn.execute(_sql("record_scoring_run", settings), {
            **summary, "as_of": as_of, "data_url": str(data_url), "started_at": started_at})
    return {**summary, "mean_p_active_60d": float(probabilities.mean()),
            "seconds": round(time.perf_counter() - clock, 2)}
