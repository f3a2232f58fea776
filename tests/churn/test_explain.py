"""SHAP for the churn model: artifacts on the run, additivity, agreement with shap.LinearExplainer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def model_and_holdout(trained, tmp_path_factory):
    from kpi.churn.mlflow_utils import download_run_artifact, load_version_model

    tmp = tmp_path_factory.mktemp("explain")
    holdout = pd.read_parquet(
        download_run_artifact(trained.settings, trained.result["run_id"], "holdout/holdout.parquet", tmp)
    )
    return load_version_model(trained.settings, 1), holdout


def test_global_shap_artifacts_are_logged_on_the_version_run(trained, tmp_path):
    from kpi.churn.features import FEATURE_COLUMNS
    from kpi.churn.mlflow_utils import download_run_artifact

    run_id = trained.result["run_id"]
    png = download_run_artifact(trained.settings, run_id, "shap/summary.png", tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    mean_abs = json.loads(
        download_run_artifact(trained.settings, run_id, "shap/mean_abs_shap.json", tmp_path).read_text()
    )
    assert set(mean_abs) == set(FEATURE_COLUMNS)
    values = list(mean_abs.values())
    assert all(v >= 0 for v in values) and values == sorted(values, reverse=True)
    assert values[0] > 0


def test_explain_row_is_additive_in_log_odds(model_and_holdout):
    from kpi.churn.explain import explain_row

    model, holdout = model_and_holdout
    for i in range(0, 40, 4):
        row = holdout.iloc[[i]]
        expl = explain_row(model, row)
        assert list(expl.columns) == ["feature", "value", "contribution"]
        assert sorted(expl["feature"]) == sorted(model.feature_names)
        logit = model.decision_function(row)[0]
        assert expl.attrs["base_value"] + expl["contribution"].sum() == pytest.approx(logit, abs=1e-9)
        assert expl.attrs["p_active_60d"] == pytest.approx(model.predict_proba(row)[0], abs=1e-12)
        # sorted by size of contribution
        sizes = expl["contribution"].abs().to_numpy()
        assert np.all(sizes[:-1] >= sizes[1:])


def test_closed_form_equals_shap_linear_explainer(model_and_holdout):
    from kpi.churn.explain import library_shap_values, shap_values

    model, holdout = model_and_holdout
    background = holdout.sample(200, random_state=0)
    rows = holdout.head(50)
    base, ours = shap_values(model, rows, background)
    lib_base, lib = library_shap_values(model, rows, background)
    assert base == pytest.approx(lib_base, abs=1e-9)
    assert np.max(np.abs(ours - lib)) < 1e-9
    assert np.allclose(base + ours.sum(axis=1), model.decision_function(rows), atol=1e-9)


def test_explain_row_takes_exactly_one_row(model_and_holdout):
    from kpi.churn.explain import explain_row

    model, holdout = model_and_holdout
    with pytest.raises(ValueError, match="exactly one row"):
        explain_row(model, holdout.head(2))
