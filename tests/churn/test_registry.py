"""Promotion with MLflow aliases on a real sqlite store: first model, better, worse and broken candidates.

Candidates are real registered versions of real ChurnModels evaluated on the holdout of the session's
training run: the trained model itself, a weaker (noisy, recalibrated) copy of it, and broken ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MODEL = "churn-registry-test"


@pytest.fixture(scope="module")
def setup(trained, tmp_path_factory):
    """Settings for a separate registered model in the same store, the trained model and its holdout."""
    from kpi.churn.mlflow_utils import download_run_artifact, load_version_model

    tmp = tmp_path_factory.mktemp("registry")
    holdout_file = download_run_artifact(
        trained.settings, trained.result["run_id"], "holdout/holdout.parquet", tmp
    )
    settings = trained.settings.model_copy(update={"churn_model_name": MODEL})
    return settings, load_version_model(trained.settings, 1), holdout_file


def register(settings, model, holdout_file: Path, parity: float = 1e-16) -> int:
    """Log ``model`` in a new run that carries the holdout and a parity figure; return the new version."""
    import mlflow
    from kpi.churn.mlflow_utils import experiment_id, log_and_register, using_store

    holdout = pd.read_parquet(holdout_file)
    with (
        using_store(settings),
        mlflow.start_run(experiment_id=experiment_id("churn-registry-test", settings)),
    ):
        mlflow.log_artifact(str(holdout_file), artifact_path="holdout")
        mlflow.log_metric("parity_max_abs_diff", parity)
        version = log_and_register(
            settings, model, holdout[model.feature_names].head(3), tags={"purpose": "test"}
        )
    return int(version.version)


def weakened_model(model, holdout: pd.DataFrame, seed: int = 0):
    """A calibrated but clearly weaker model: noisy coefficients, Platt-recalibrated on the holdout.

    The noise grows until the holdout AUC is at least 0.03 below the trained model's but still >= 0.65,
    so the weak model passes the guardrails (AUC, calibration) and loses on merit alone.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    y = holdout["label"].astype(int).to_numpy()
    z = model.transform(holdout)
    w = np.asarray(model.coefficients)
    target = roc_auc_score(y, model.predict_proba(holdout)) - 0.03
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=len(w))
    for scale in (0.5, 1, 2, 3, 5, 8, 12):
        noisy = w + scale * np.abs(w).mean() * direction
        logit = z @ noisy
        auc = roc_auc_score(y, logit)
        if 0.65 <= auc <= target:
            platt = LogisticRegression(C=1e6).fit(logit.reshape(-1, 1), y)
            a, c = float(platt.coef_[0, 0]), float(platt.intercept_[0])
            return dataclasses.replace(model, coefficients=(a * noisy).tolist(), intercept=c)
    raise AssertionError("could not build a weaker calibrated model from the trained one")


def version_tags(settings, version: int) -> dict[str, str]:
    from kpi.churn.mlflow_utils import client

    return client(settings).get_model_version(settings.churn_model_name, str(version)).tags


def champion_version(settings) -> int | None:
    from kpi.churn.registry import load_champion

    champ = load_champion(settings)
    return None if champ is None else champ.version


def test_promotion_sequence_first_better_worse_and_broken(setup):
    from kpi.churn.registry import evaluate_and_promote

    settings, trained_model, holdout_file = setup
    holdout = pd.read_parquet(holdout_file)
    weak = weakened_model(trained_model, holdout)
    assert champion_version(settings) is None

    # 1. the first model becomes champion when its guardrails pass
    v_weak = register(settings, weak, holdout_file)
    first = evaluate_and_promote(settings, v_weak)
    assert first["decision"] == "promoted" and first["champion_auc"] is None, first["reason"]
    assert champion_version(settings) == v_weak
    tags = version_tags(settings, v_weak)
    assert tags["promotion.decision"] == "promoted"
    assert float(tags["promotion.candidate_auc"]) == pytest.approx(first["candidate_auc"], abs=1e-6)

    # 2. the trained model beats the weak champion by more than the margin: promoted
    v_good = register(settings, trained_model, holdout_file)
    better = evaluate_and_promote(settings, v_good)
    assert better["decision"] == "promoted", better["reason"]
    assert better["reason"].startswith("AUC")
    assert better["candidate_auc"] >= better["champion_auc"] + settings.churn_promotion_margin
    assert champion_version(settings) == v_good
    tags = version_tags(settings, v_good)
    assert float(tags["promotion.champion_auc"]) == pytest.approx(better["champion_auc"], abs=1e-6)
    assert tags["promotion.compared_with_version"] == str(v_weak)
    assert tags["promotion.margin"] == str(settings.churn_promotion_margin)

    # 3. a worse candidate is never promoted
    v_worse = register(settings, weak, holdout_file)
    worse = evaluate_and_promote(settings, v_worse)
    assert worse["decision"] == "kept_champion"
    assert worse["candidate_auc"] < worse["champion_auc"]
    assert champion_version(settings) == v_good
    assert version_tags(settings, v_worse)["promotion.decision"] == "kept_champion"

    # 4. an equally good candidate does not clear the margin
    v_same = register(settings, trained_model, holdout_file)
    same = evaluate_and_promote(settings, v_same)
    assert same["decision"] == "kept_champion" and champion_version(settings) == v_good

    # 5. guardrails: failed parity, NaN predictions
    v_parity = register(settings, trained_model, holdout_file, parity=1e-3)
    broken = evaluate_and_promote(settings, v_parity)
    assert broken["decision"] == "rejected" and "parity_with_spark" in broken["reason"]
    nan_model = dataclasses.replace(trained_model, intercept=float("nan"))
    v_nan = register(settings, nan_model, holdout_file)
    nan = evaluate_and_promote(settings, v_nan)
    assert nan["decision"] == "rejected" and "no_nan_predictions" in nan["reason"]
    assert champion_version(settings) == v_good

    # re-evaluating the champion is a no-op
    assert evaluate_and_promote(settings, v_good)["decision"] == "already_champion"


def test_load_champion_is_cached_until_the_alias_moves(trained):
    from kpi.churn.mlflow_utils import client
    from kpi.churn.registry import evaluate_and_promote, load_champion

    evaluate_and_promote(trained.settings, 1)
    first = load_champion(trained.settings)
    assert first is not None and first.version == 1
    assert load_champion(trained.settings) is first
    assert first.auc == pytest.approx(trained.result["auc"])
    assert first.reference_features_uri.endswith("reference/features.parquet")
    assert first.trained_at
    # no stages anywhere: the alias is the only serving marker
    mv = client(trained.settings).get_model_version("churn-model", "1")
    assert mv.aliases == ["champion"]
