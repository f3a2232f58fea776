"""SHAP for the churn model: artifacts on the run, additivity, agreement with the shap library for both
families (shap.LinearExplainer for the regression, shap.TreeExplainer for the exported trees)."""

from __future__ import annotations

import itertools
import json
import math

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


def test_the_trained_model_agrees_with_the_shap_library(model_and_holdout):
    from kpi.churn.explain import library_shap_values, shap_values

    model, holdout = model_and_holdout
    rows = holdout.head(50)
    background = holdout.sample(200, random_state=0) if model.linear is not None else None
    base, ours = shap_values(model, rows, background)
    lib_base, lib = library_shap_values(model, rows, background)
    assert base == pytest.approx(lib_base, abs=1e-9)
    assert np.max(np.abs(ours - lib)) < 1e-9
    assert np.allclose(base + ours.sum(axis=1), model.decision_function(rows), atol=1e-9)


@pytest.mark.parametrize("family", ["logistic_regression", "gbt"])
def test_each_family_agrees_with_the_shap_library(synthetic_fits, family):
    from kpi.churn.explain import library_shap_values, shap_values

    fit = synthetic_fits[family]
    model, rows = fit.model, fit.test
    background = rows.sample(100, random_state=0) if family == "logistic_regression" else None
    base, ours = shap_values(model, rows, background)
    lib_base, lib = library_shap_values(model, rows, background)
    assert base == pytest.approx(lib_base, abs=1e-9)
    assert np.max(np.abs(ours - lib)) < 1e-9
    assert np.max(np.abs(base + ours.sum(axis=1) - model.decision_function(rows))) < 1e-9
    # unseen categories and missing values are explained too (rows 0-3 of the synthetic test set)
    assert np.isfinite(ours[:4]).all()


def _brute_force_tree_shap(model, x: np.ndarray) -> np.ndarray:
    """Shapley values of the path-dependent value function by enumerating coalitions, one tree at a time."""
    phi = np.zeros(len(model.feature_names))
    for tree in model.trees.trees:
        scale = model.trees.margin_scale * tree.weight

        def value(subset: frozenset, node: int = 0, tree=tree, scale=scale) -> float:
            f = tree.feature[node]
            if f < 0:
                return scale * tree.value[node]
            if f in subset:
                if tree.left_categories[node] is not None:
                    left = int(x[f]) in tree.left_categories[node]
                else:
                    left = x[f] <= tree.threshold[node]
                return value(subset, tree.left[node] if left else tree.right[node])
            l, r = tree.left[node], tree.right[node]
            return (tree.cover[l] * value(subset, l) + tree.cover[r] * value(subset, r)) / tree.cover[node]

        used = sorted({f for f in tree.feature if f >= 0})
        k = len(used)
        for j in used:
            others = [f for f in used if f != j]
            for size in range(k):
                weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
                for subset in itertools.combinations(others, size):
                    s = frozenset(subset)
                    phi[j] += weight * (value(s | {j}) - value(s))
    return phi


def test_tree_shap_equals_the_shapley_values_by_enumeration(synthetic_fits):
    """An independent check of the per-feature values (categorical splits included) on a few rows."""
    from kpi.churn.explain import shap_values

    model = synthetic_fits["gbt"].model
    rows = synthetic_fits["gbt"].test.head(4)
    _, ours = shap_values(model, rows)
    x = model.tree_input(rows)
    for i in range(len(rows)):
        assert np.max(np.abs(ours[i] - _brute_force_tree_shap(model, x[i]))) < 1e-9


def test_explain_row_takes_exactly_one_row(model_and_holdout):
    from kpi.churn.explain import explain_row

    model, holdout = model_and_holdout
    with pytest.raises(ValueError, match="exactly one row"):
        explain_row(model, holdout.head(2))


def test_tree_shap_takes_no_background(synthetic_fits):
    from kpi.churn.explain import shap_values

    fit = synthetic_fits["gbt"]
    with pytest.raises(ValueError, match="path-dependent"):
        shap_values(fit.model, fit.test.head(2), background=fit.test)
