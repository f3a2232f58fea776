"""Promotion of churn model versions with MLflow 3 aliases (no stages), and loading the champion.

A candidate version is scored together with the current ``champion`` on the candidate's own holdout
(logged by training as ``holdout/holdout.parquet``). It takes the alias only if every guardrail passes
and its ROC AUC beats the champion's by ``churn_promotion_margin``; the first model becomes champion when
its guardrails pass. The decision and both figures are written as tags on the candidate version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from kpi.churn.model import ChurnModel, classification_metrics
from kpi.settings import Settings

log = logging.getLogger(__name__)

TAG_PREFIX = "promotion."
PROMOTED, KEPT, REJECTED, ALREADY = "promoted", "kept_champion", "rejected", "already_champion"


@dataclass
class Champion:
    """The serving model version and what the dashboard shows about it."""

    model: ChurnModel
    version: int
    run_id: str
    trained_at: str | None
    auc: float | None
    reference_features_uri: str
    name: str


_cache: dict[tuple[str, str, str], Champion] = {}
_cache_lock = threading.Lock()


def _holdout(settings: Settings, run_id: str):
    import pandas as pd

    from kpi.churn import mlflow_utils
    from kpi.churn.train import HOLDOUT_ARTIFACT

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow_utils.download_run_artifact(settings, run_id, HOLDOUT_ARTIFACT, tmp)
        return pd.read_parquet(path)


def _champion_version(client, settings: Settings):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(settings.churn_model_name, settings.churn_champion_alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def guardrails(settings: Settings, run: Any, p: np.ndarray, metrics: dict[str, float] | None) -> dict[str, dict]:
    """Each guardrail with its figure, limit and verdict (``passed``)."""
    from kpi.churn.train import PARITY_TOLERANCE

    nan_count = int(np.isnan(p).sum())
    parity = run.data.metrics.get("parity_max_abs_diff")
    checks = {
        "no_nan_predictions": {"value": nan_count, "limit": 0, "passed": nan_count == 0},
        "parity_with_spark": {
            "value": parity, "limit": PARITY_TOLERANCE, "passed": parity is not None and parity < PARITY_TOLERANCE,
        },
    }
    if metrics is not None:
        checks["min_auc"] = {"value": metrics["roc_auc"], "limit": settings.churn_min_auc,
                             "passed": metrics["roc_auc"] >= settings.churn_min_auc}
        checks["max_calibration_error"] = {"value": metrics["ece"], "limit": settings.churn_max_calibration_error,
                                           "passed": metrics["ece"] <= settings.churn_max_calibration_error}
    return checks


def evaluate_and_promote(settings: Settings, model_version: int | str) -> dict[str, Any]:
    """Compare a candidate version with the champion on the candidate's holdout and move the alias if earned.

    Args:
        settings: platform settings (model name, alias, margin, guardrail limits, MLflow URI).
        model_version: the registered version of ``churn-model`` to evaluate.

    Returns:
        ``decision`` (promoted / kept_champion / rejected / already_champion), ``candidate_auc``,
        ``champion_auc``, ``margin``, ``champion_version`` (after the decision), ``guardrails``, ``reason``.
    """
    from kpi.churn import mlflow_utils

    client = mlflow_utils.client(settings)
    name, alias = settings.churn_model_name, settings.churn_champion_alias
    candidate = client.get_model_version(name, str(model_version))
    run = client.get_run(candidate.run_id)
    holdout = _holdout(settings, candidate.run_id)
    from kpi.churn.train import LABEL

    y = holdout[LABEL].to_numpy()
    cand_model = mlflow_utils.load_version_model(settings, candidate.version)
    cand_p = cand_model.predict_proba(holdout)
    cand_metrics = None if np.isnan(cand_p).any() else classification_metrics(y, cand_p)
    checks = guardrails(settings, run, cand_p, cand_metrics)
    failed = [k for k, v in checks.items() if not v["passed"]]

    current = _champion_version(client, settings)
    champion_auc = None
    champion_version = int(current.version) if current is not None else None
    if current is not None and current.version != candidate.version:
        champ_model = mlflow_utils.load_version_model(settings, current.version)
        missing = [c for c in champ_model.feature_names if c not in holdout.columns]
        if not missing:
            champ_p = champ_model.predict_proba(holdout)
            if not np.isnan(champ_p).any():
                champion_auc = classification_metrics(y, champ_p)["roc_auc"]
        else:
            log.warning("champion v%s needs features absent from the holdout: %s", current.version, missing)

    margin = settings.churn_promotion_margin
    cand_auc = cand_metrics["roc_auc"] if cand_metrics else None
    if current is not None and current.version == candidate.version:
        decision, reason = ALREADY, "the candidate already holds the alias"
    elif failed:
        decision, reason = REJECTED, "guardrails failed: " + ", ".join(failed)
    elif current is None:
        decision, reason = PROMOTED, "first model: no champion yet"
    elif champion_auc is None:
        decision, reason = PROMOTED, f"champion v{current.version} cannot score this holdout (feature set changed)"
    elif cand_auc >= champion_auc + margin:
        decision, reason = PROMOTED, f"AUC {cand_auc:.4f} >= champion {champion_auc:.4f} + margin {margin}"
    else:
        decision, reason = KEPT, f"AUC {cand_auc:.4f} < champion {champion_auc:.4f} + margin {margin}"

    if decision == PROMOTED:
        client.set_registered_model_alias(name, alias, candidate.version)
        champion_version = int(candidate.version)
    tags = {
        "decision": decision,
        "reason": reason,
        "candidate_auc": "" if cand_auc is None else f"{cand_auc:.6f}",
        "champion_auc": "" if champion_auc is None else f"{champion_auc:.6f}",
        "compared_with_version": "" if current is None else str(current.version),
        "margin": str(margin),
        "guardrails": json.dumps(checks, default=float),
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, TAG_PREFIX + key, value)
    log.info("churn-model v%s: %s (%s)", candidate.version, decision, reason)
    return {
        "decision": decision,
        "reason": reason,
        "model_version": int(candidate.version),
        "candidate_auc": cand_auc,
        "champion_auc": champion_auc,
        "margin": margin,
        "champion_version": champion_version,
        "candidate_metrics": cand_metrics,
        "guardrails": checks,
    }


def load_champion(settings: Settings) -> Champion | None:
    """The version holding the ``champion`` alias, or None; one registry call when it has not changed.

    The model itself is cached per (store, name, version): moving the alias is seen on the next call.
    """
    from kpi.churn import mlflow_utils

    client = mlflow_utils.client(settings)
    current = _champion_version(client, settings)
    if current is None:
        return None
    key = (settings.resolved_mlflow_uri, settings.churn_model_name, str(current.version))
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    model = mlflow_utils.load_version_model(settings, current.version)
    run = client.get_run(current.run_id)
    from kpi.churn.train import REFERENCE_ARTIFACT

    champion = Champion(
        model=model,
        version=int(current.version),
        run_id=current.run_id,
        trained_at=model.metadata.get("trained_at"),
        auc=run.data.metrics.get("holdout_roc_auc"),
        reference_features_uri=f"runs:/{current.run_id}/{REFERENCE_ARTIFACT}",
        name=settings.churn_model_name,
    )
    with _cache_lock:
        _cache[key] = champion
    return champion
