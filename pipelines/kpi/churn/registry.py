"""Promotion of churn model versions with MLflow 3 aliases (no stages), and loading the champion.

A candidate version is compared with the current ``champion`` on the same users: the candidate's holdout
(``holdout/holdout.parquet``, every feature column the training set had), each model reading its own
feature columns from it. Promotion happens in two steps:

1. :func:`decide_promotion` reads the alias once (the champion version it compares with), scores both
   models and returns a :class:`Decision` whose ``reason_code`` says what happened;
2. :func:`apply_promotion` moves the alias by compare-and-set: under a registry lock, only if the alias
   still points at the version the decision compared with. Otherwise the candidate is not promoted and
   the decision says ``champion_changed``.

When the champion cannot be scored on the candidate's holdout (features absent from it, NaN scores, an
unreadable model) the decision is ``cannot_compare`` and the champion stays, unless
``KPI_CHURN_PROMOTE_INCOMPARABLE`` is set (then the candidate is promoted, with the same reason code).
The decision and its figures are written as ``promotion.*`` tags on the candidate version.

MLflow has no conditional alias update; the lock is a registered model named
``<model>.promotion-lock`` (creating a registered model is atomic in every MLflow store: the name is
unique), held only around "read alias, compare, set alias" and deleted afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kpi.churn.metrics import classification_metrics
from kpi.churn.model import ChurnModel
from kpi.settings import Settings

log = logging.getLogger(__name__)

TAG_PREFIX = "promotion."
# decisions
PROMOTED, KEPT, REJECTED, ALREADY, CANNOT_COMPARE = (
    "promoted", "kept_champion", "rejected", "already_champion", "cannot_compare")
# reason codes: what happened
NO_CHAMPION = "no_champion"
BEATS_CHAMPION = "beats_champion_by_margin"
NOT_BETTER = "not_better_by_margin"
GUARDRAILS_FAILED = "guardrails_failed"
ALREADY_CHAMPION = "already_champion"
CHAMPION_MISSING_FEATURES = "champion_features_missing"
CHAMPION_NAN_SCORES = "champion_nan_scores"
CHAMPION_UNREADABLE = "champion_unreadable"
CHAMPION_CHANGED = "champion_changed"
INCOMPARABLE = (CHAMPION_MISSING_FEATURES, CHAMPION_NAN_SCORES, CHAMPION_UNREADABLE)

LOCK_SUFFIX = ".promotion-lock"
LOCK_WAIT_SECONDS = 60.0
LOCK_STALE_SECONDS = 600.0  # the lock guards a few registry calls: older than this, its holder died


class PromotionLockTimeout(RuntimeError):
    """Another promotion held the registry lock for longer than we wait."""


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


@dataclass
class Decision:
    """What :func:`decide_promotion` concluded for one candidate version.

    Attributes:
        decision: promoted / kept_champion / rejected / already_champion / cannot_compare.
        reason_code: the machine-readable cause (one of the module's reason codes).
        reason: the same in words, with the figures.
        model_version: the candidate version.
        compared_with_version: the champion version the candidate was compared with (None: no champion).
        candidate_auc, champion_auc: holdout ROC AUCs (None when not computable).
        margin: the AUC margin the candidate had to clear.
        candidate_metrics: every holdout metric of the candidate (None with NaN scores).
        guardrails: each guardrail with its figure, limit and verdict.
        champion_version: the version holding the alias after the decision was applied.
    """

    decision: str
    reason_code: str
    reason: str
    model_version: int
    compared_with_version: int | None
    candidate_auc: float | None
    champion_auc: float | None
    margin: float
    candidate_metrics: dict[str, float] | None = None
    guardrails: dict[str, dict] = field(default_factory=dict)
    champion_version: int | None = None

    @property
    def moves_alias(self) -> bool:
        """True when applying the decision sets the alias to the candidate."""
        return self.decision == PROMOTED


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


def champion_version(settings: Settings) -> int | None:
    """The version number holding the champion alias, or None (one registry call)."""
    from kpi.churn import mlflow_utils

    current = _champion_version(mlflow_utils.client(settings), settings)
    return None if current is None else int(current.version)


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


def _score_champion(settings: Settings, version: int, holdout, y: np.ndarray) -> tuple[float | None, str | None, str]:
    """``(champion AUC, None, "")`` or ``(None, reason code, explanation)`` when it cannot be scored."""
    from kpi.churn import mlflow_utils

    try:
        model = mlflow_utils.load_version_model(settings, version)
    except Exception as exc:  # noqa: BLE001 - any failure to read the champion is a recorded reason, not a crash
        return None, CHAMPION_UNREADABLE, f"champion v{version} could not be loaded: {type(exc).__name__}: {exc}"
    missing = [c for c in model.feature_names if c not in holdout.columns]
    if missing:
        return None, CHAMPION_MISSING_FEATURES, (
            f"champion v{version} needs features absent from the candidate's holdout: {missing}")
    p = model.predict_proba(holdout)
    nan = int(np.isnan(p).sum())
    if nan:
        return None, CHAMPION_NAN_SCORES, f"champion v{version} scores {nan} of {len(p)} holdout users as NaN"
    return classification_metrics(y, p)["roc_auc"], None, ""


def decide_promotion(settings: Settings, model_version: int | str) -> Decision:
    """Compare a candidate version with the current champion on the candidate's holdout users.

    Reads the alias once: the decision records that version as ``compared_with_version``. Nothing is
    changed in the registry.
    """
    from kpi.churn import mlflow_utils
    from kpi.churn.train import LABEL

    client = mlflow_utils.client(settings)
    candidate = client.get_model_version(settings.churn_model_name, str(model_version))
    version = int(candidate.version)
    run = client.get_run(candidate.run_id)
    holdout = _holdout(settings, candidate.run_id)
    y = holdout[LABEL].to_numpy()
    cand_p = mlflow_utils.load_version_model(settings, version).predict_proba(holdout)
    cand_metrics = None if np.isnan(cand_p).any() else classification_metrics(y, cand_p)
    checks = guardrails(settings, run, cand_p, cand_metrics)
    failed = [k for k, v in checks.items() if not v["passed"]]
    cand_auc = cand_metrics["roc_auc"] if cand_metrics else None
    margin = settings.churn_promotion_margin

    current = _champion_version(client, settings)
    compared = None if current is None else int(current.version)
    champion_auc, code, why = None, None, ""
    if compared is not None and compared != version:
        champion_auc, code, why = _score_champion(settings, compared, holdout, y)

    def decision(outcome: str, reason_code: str, reason: str) -> Decision:
        return Decision(outcome, reason_code, reason, version, compared, cand_auc, champion_auc, margin,
                        cand_metrics, checks, compared)

    if compared == version:
        return decision(ALREADY, ALREADY_CHAMPION, "the candidate already holds the alias")
    if failed:
        return decision(REJECTED, GUARDRAILS_FAILED, "guardrails failed: " + ", ".join(failed))
    if compared is None:
        return decision(PROMOTED, NO_CHAMPION, "first model: no champion yet")
    if code is not None:
        if settings.churn_promote_incomparable:
            return decision(PROMOTED, code, f"{why}; promoted without comparison (KPI_CHURN_PROMOTE_INCOMPARABLE)")
        return decision(CANNOT_COMPARE, code, f"{why}; the champion stays (KPI_CHURN_PROMOTE_INCOMPARABLE is off)")
    if cand_auc >= champion_auc + margin:
        return decision(PROMOTED, BEATS_CHAMPION,
                        f"AUC {cand_auc:.4f} >= champion v{compared} {champion_auc:.4f} + margin {margin}")
    return decision(KEPT, NOT_BETTER, f"AUC {cand_auc:.4f} < champion v{compared} {champion_auc:.4f} + margin {margin}")


@contextmanager
def registry_lock(settings: Settings, wait_seconds: float = LOCK_WAIT_SECONDS,
                  stale_seconds: float = LOCK_STALE_SECONDS) -> Iterator[str]:
    """Hold the promotion lock of the settings' registered model (a registered model used as a mutex).

    Raises:
        PromotionLockTimeout: when another holder keeps it longer than ``wait_seconds``.
    """
    from mlflow.exceptions import MlflowException

    from kpi.churn import mlflow_utils

    client = mlflow_utils.client(settings)
    name = settings.churn_model_name + LOCK_SUFFIX
    owner = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            client.create_registered_model(name, tags={"owner": owner},
                                           description="held while a churn promotion moves the champion alias")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        held = _lock_holder(client, name)
        if held is not None and time.time() - held[1] > stale_seconds:
            log.warning("breaking the promotion lock of %s held by %s since %s", name, held[0],
                        dt.datetime.fromtimestamp(held[1], dt.UTC).isoformat(timespec="seconds"))
            _delete_quietly(client, name)
            continue
        if time.monotonic() > deadline:
            who = "unknown" if held is None else f"{held[0]} since {dt.datetime.fromtimestamp(held[1], dt.UTC)}"
            raise PromotionLockTimeout(
                f"registered model {name!r} (the promotion lock) is held by {who}; if that process died, "
                f"delete the registered model {name!r} or wait {stale_seconds:.0f}s")
        time.sleep(0.1)
    try:
        yield owner
    finally:
        _delete_quietly(client, name)


def _lock_holder(client, name: str) -> tuple[str, float] | None:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return None  # released between our attempt and this read
    return model.tags.get("owner", "?"), model.creation_timestamp / 1000.0


def _delete_quietly(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def set_alias_if_unchanged(settings: Settings, expected: int | None, new: int) -> tuple[bool, int | None]:
    """Compare-and-set of the champion alias: move it to ``new`` only if it still points at ``expected``.

    Returns:
        ``(moved, version holding the alias afterwards)``.
    """
    from kpi.churn import mlflow_utils

    client = mlflow_utils.client(settings)
    with registry_lock(settings):
        current = _champion_version(client, settings)
        now = None if current is None else int(current.version)
        if now != expected:
            return False, now
        client.set_registered_model_alias(settings.churn_model_name, settings.churn_champion_alias, str(new))
        return True, int(new)


def apply_promotion(settings: Settings, decision: Decision) -> Decision:
    """Apply ``decision``: move the alias by compare-and-set if it promotes, then tag the candidate version.

    A promotion whose compared champion no longer holds the alias is not applied: the result is
    ``kept_champion`` with reason code ``champion_changed`` (evaluate the candidate again).
    """
    from kpi.churn import mlflow_utils

    result = Decision(**asdict(decision))
    if decision.moves_alias:
        moved, holder = set_alias_if_unchanged(settings, decision.compared_with_version, decision.model_version)
        result.champion_version = holder
        if not moved:
            before = "no champion" if decision.compared_with_version is None else f"v{decision.compared_with_version}"
            result.decision, result.reason_code = KEPT, CHAMPION_CHANGED
            result.reason = (f"not applied: the champion moved from {before} to v{holder} during the evaluation "
                             f"(which had concluded: {decision.reason}); evaluate again")
    else:
        result.champion_version = champion_version(settings)
    client = mlflow_utils.client(settings)
    tags = {
        "decision": result.decision,
        "reason_code": result.reason_code,
        "reason": result.reason,
        "candidate_auc": "" if result.candidate_auc is None else f"{result.candidate_auc:.6f}",
        "champion_auc": "" if result.champion_auc is None else f"{result.champion_auc:.6f}",
        "compared_with_version": "" if result.compared_with_version is None else str(result.compared_with_version),
        "champion_version_after": "" if result.champion_version is None else str(result.champion_version),
        "margin": str(result.margin),
        "guardrails": json.dumps(result.guardrails, default=float),
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(settings.churn_model_name, str(result.model_version), TAG_PREFIX + key, value)
    log.info("churn-model v%s: %s [%s] (%s)", result.model_version, result.decision, result.reason_code, result.reason)
    return result


def evaluate_and_promote(settings: Settings, model_version: int | str) -> dict[str, Any]:
    """Decide on a candidate version and apply the decision (compare-and-set of the alias).

    Args:
        settings: platform settings (model name, alias, margin, guardrail limits, incomparable policy,
            MLflow URI).
        model_version: the registered version of ``churn-model`` to evaluate.

    Returns:
        :class:`Decision` as a dict: ``decision``, ``reason_code``, ``reason``, ``candidate_auc``,
        ``champion_auc``, ``margin``, ``compared_with_version``, ``champion_version`` (after the decision),
        ``candidate_metrics``, ``guardrails``, ``model_version``.
    """
    return asdict(apply_promotion(settings, decide_promotion(settings, model_version)))


def load_champion(settings: Settings) -> Champion | None:
    """The version holding the ``champion`` alias, or None; one registry call when it has not changed.

    The model itself is cached per (store, name, version): moving the alias is seen on the next call.
    The model is read from its JSON parameters (:func:`kpi.churn.mlflow_utils.load_version_model`):
    nothing stored with it is executed.
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
