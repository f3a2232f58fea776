"""The JVM-free ChurnModel, both families: export from a fitted Spark pipeline, parity with Spark,
persistence as plain data (and refusal of malformed data), schema, metrics."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from kpi.churn.metrics import classification_metrics, expected_calibration_error
from kpi.churn.model import ChurnModel, ModelFormatError
from model_support import CATEGORICAL, NUMERIC

FAMILIES = ["logistic_regression", "gbt"]


@pytest.mark.parametrize("family", FAMILIES)
def test_numpy_export_matches_spark_within_1e_6(spark, synthetic_fits, family):
    fit = synthetic_fits[family]
    expected = fit.spark_probabilities(spark, fit.test)
    got = fit.model.predict_proba(fit.test.sort_values("CUS_CUST_ID_BUY"))
    assert fit.model.family == family
    assert len(got) == len(expected) == 300
    assert np.max(np.abs(got - expected)) < 1e-6


def test_the_tree_export_has_categorical_and_continuous_splits(synthetic_fits):
    model = synthetic_fits["gbt"].model
    trees = model.trees.trees
    assert len(trees) == 15 and trees[0].weight == 1.0
    categorical = [n for t in trees for n, c in enumerate(t.left_categories) if c is not None]
    continuous = [n for t in trees for n, th in enumerate(t.threshold) if th is not None]
    assert categorical and continuous, "the synthetic signal needs both kinds of split"
    # missing numerics get their own branch: a value below every training value
    assert all(model.impute_values[c] < model.numeric_ranges.get(c, [0, 0])[0] for c in ("recency",))


def test_unseen_and_missing_categories_share_the_unknown_slot(synthetic_fits):
    for fit in synthetic_fits.values():
        row = fit.test.iloc[[0]].copy()
        as_null = row.assign(card=None)
        assert fit.model.predict_proba(row)[0] == pytest.approx(fit.model.predict_proba(as_null)[0], abs=0)


def test_missing_numeric_takes_the_stored_impute_value(synthetic_fits):
    for fit in synthetic_fits.values():
        model = fit.model
        row = fit.test.iloc[[2]].copy()
        imputed = row.assign(recency=model.impute_values["recency"])
        assert model.predict_proba(row)[0] == model.predict_proba(imputed)[0]


def test_export_reads_the_layout_of_the_regression(synthetic_fits):
    model = synthetic_fits["logistic_regression"].model
    assert model.numeric_features == NUMERIC
    assert model.categorical_features == CATEGORICAL
    assert sorted(model.categories["card"]) == ["BLACK", "CLASSIC", "GOLD"]
    assert len(model.linear.coefficients) == len(model.design_columns()) == 3 + 4 + 5
    # the signal the data was generated with survives: recency lowers, BLACK raises the probability
    coef = dict(zip(model.design_columns(), model.linear.coefficients, strict=True))
    assert coef[("recency", "")] < 0
    assert coef[("card", "BLACK")] > coef[("card", "CLASSIC")]


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip_exactly(tmp_path, synthetic_fits, family):
    fit = synthetic_fits[family]
    loaded = ChurnModel.load(fit.model.save(tmp_path / "m.json"))
    assert loaded.to_dict() == fit.model.to_dict()
    assert np.array_equal(loaded.predict_proba(fit.test), fit.model.predict_proba(fit.test))


def test_single_rows_and_batches_score_alike(synthetic_fits):
    # trees are traversed in chunks of rows; a row's probability must not depend on its neighbours
    model = synthetic_fits["gbt"].model
    big = pd.concat([synthetic_fits["gbt"].test] * 20, ignore_index=True)
    batch = model.predict_proba(big)
    singles = np.array([model.predict_proba(big.iloc[[i]])[0] for i in range(0, len(big), 97)])
    assert np.array_equal(batch[::97], singles)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rows", [1, 5, 300])  # both sides of the few-rows dict lookup (DICT_LOOKUP_MAX_ROWS)
def test_a_mapping_of_columns_scores_and_explains_exactly_as_a_frame(synthetic_fits, family, rows):
    # the scoring API hands the model its checked columns without a frame: same probabilities and SHAP
    # values to the bit, also for the cells a category lookup can trip on (null, NaN, unseen, a number)
    from kpi.churn.explain import shap_values
    from kpi.churn.model import DICT_LOOKUP_MAX_ROWS

    assert 5 <= DICT_LOOKUP_MAX_ROWS < 300
    fit = synthetic_fits[family]
    frame = pd.concat([fit.test] * (rows // len(fit.test) + 1), ignore_index=True).iloc[:rows].copy()
    cards = frame["card"].astype(object).to_numpy()
    hostile = [None, float("nan"), "PLATINUM", 5, "GOLD"]
    cards[: min(rows, len(hostile))] = hostile[: min(rows, len(hostile))]
    frame["card"] = cards
    frame.loc[frame.index[0], "recency"] = np.nan
    columns = {name: frame[name].to_numpy() for name in frame.columns}
    model = fit.model
    assert np.array_equal(model.predict_proba(columns), model.predict_proba(frame))
    background = fit.test if family == "logistic_regression" else None  # trees need none (path-dependent)
    base_m, phi_m = shap_values(model, columns, background)
    base_f, phi_f = shap_values(model, frame, background)
    assert base_m == base_f and np.array_equal(phi_m, phi_f)
    # the lookup's answer itself: unknown, missing and unseen share the extra index; 5 is not a label
    unknown = len(model.categories["card"])
    card = model.category_indices(columns)[model.categorical_features.index("card")]
    assert list(card[: min(rows, 4)]) == [unknown] * min(rows, 4)
    with pytest.raises(ValueError, match="recency"):
        model.predict_proba({k: v for k, v in columns.items() if k != "recency"})


def test_an_overflowing_regression_scores_nan_from_a_frame_and_from_columns():
    # inf - inf is NaN: a degenerate fit must show as NaN scores (promotion refuses them), never as a
    # confident 0.0; a row-major matrix-vector product in BLAS returned -inf for these rows
    from kpi.churn.model import LinearParams

    model = ChurnModel(numeric_features=["a", "b"], categorical_features=[], impute_values={"a": 0.0, "b": 0.0},
                       categories={}, linear=LinearParams([0.0, 0.0], [1.0, 1.0], [1e308, -1e308], 0.0))
    frame = pd.DataFrame({"a": [5.0, 0.0, 1.0, 3.0] * 50, "b": [5.0, 0.0, 2.0, 3.0] * 50})
    for data in (frame, {c: frame[c].to_numpy() for c in frame.columns}):
        with np.errstate(over="ignore", invalid="ignore"):
            p = model.predict_proba(data)
        assert np.isnan(p[[0, 3]]).all() and p[1] == 0.5 and p[2] == 0.0


def test_a_format_1_model_still_loads(synthetic_fits):
    model = synthetic_fits["logistic_regression"].model
    data = model.to_dict()
    linear = data.pop("linear")
    old = {k: v for k, v in data.items() if k not in ("family", "trees", "numeric_defaults")}
    old.update(format_version=1, **linear)
    loaded = ChurnModel.from_dict(old)
    assert np.array_equal(loaded.predict_proba(synthetic_fits["logistic_regression"].test),
                          model.predict_proba(synthetic_fits["logistic_regression"].test))


def _tampered(data: dict, path: str, value) -> dict:
    out = copy.deepcopy(data)
    *keys, last = path.split(".")
    target = out
    for k in keys:
        target = target[int(k)] if isinstance(target, list) else target[k]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return out


@pytest.mark.parametrize(("path", "value", "message"), [
    ("trees.trees.0.left.0", 0, "must follow it"),  # a cycle back to the root
    ("trees.trees.0.feature.0", 99, "splits on column 99"),
    ("trees.trees.0.value", [0.0], "one length"),
    ("trees.trees.0.cover.0", -1.0, "cover"),
    ("trees.margin_scale", "2", "must be a number"),
    ("family", "neural_net", "not one of"),
    ("impute_values.recency", None, "must be a number"),
    ("__class__", "os.system", "unknown fields"),
])
def test_malformed_model_data_is_refused_naming_the_field(synthetic_fits, path, value, message):
    data = synthetic_fits["gbt"].model.to_dict()
    with pytest.raises(ModelFormatError, match=message):
        ChurnModel.from_dict(_tampered(data, path, value))


def test_categorical_split_indices_are_checked(synthetic_fits):
    data = synthetic_fits["gbt"].model.to_dict()
    tree = next(t for t in data["trees"]["trees"] if any(c is not None for c in t["left_categories"]))
    node = next(i for i, c in enumerate(tree["left_categories"]) if c is not None)
    tree["left_categories"][node] = [0, 1000]
    with pytest.raises(ModelFormatError, match="category indices"):
        ChurnModel.from_dict(data)


def test_non_finite_numbers_in_the_file_are_refused(tmp_path, synthetic_fits):
    text = json.dumps(synthetic_fits["gbt"].model.to_dict()).replace('"weight": 1.0', '"weight": NaN', 1)
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(ModelFormatError, match="NaN"):
        ChurnModel.load(tmp_path / "m.json")


def test_input_schema_describes_every_feature_for_forms(synthetic_fits):
    for fit in synthetic_fits.values():
        model = fit.model
        schema = model.input_schema()
        assert list(schema) == NUMERIC + CATEGORICAL
        assert schema["recency"]["type"] == "numeric"
        assert (schema["recency"]["min"], schema["recency"]["max"]) == (0.0, 200.0)
        assert schema["card"]["type"] == "categorical"
        assert set(schema["card"]["categories"]) == {"BLACK", "GOLD", "CLASSIC"}
        assert model.predict_proba(model.example_frame(3)).shape == (3,)
    # the regression's default is its median; a tree model's is the stored median, not its "missing" value
    assert synthetic_fits["gbt"].model.input_schema()["recency"]["default"] == 21.0


def test_missing_feature_columns_are_named_in_the_error(synthetic_fits):
    for fit in synthetic_fits.values():
        with pytest.raises(ValueError, match="amount"):
            fit.model.predict_proba(fit.test.drop(columns=["amount"]))


def test_a_layout_that_does_not_match_the_coefficients_is_refused(synthetic_fits):
    data = synthetic_fits["logistic_regression"].model.to_dict()
    data["linear"]["coefficients"] = data["linear"]["coefficients"][:-1]
    with pytest.raises(ValueError, match="coefficients"):
        ChurnModel.from_dict(data)


def test_the_scoring_module_imports_only_numpy_pandas_numba_and_the_standard_library():
    # kpi/churn/model.py is bundled as it is into the MLflow artefact, which has no kpi package
    import sys

    from model_support import scoring_module_imports

    names = scoring_module_imports()
    assert names <= {"numpy", "pandas", "numba"} | set(sys.stdlib_module_names), names


def test_metrics_of_perfect_and_constant_scores():
    y = np.array([0, 0, 1, 1])
    perfect = classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert perfect["roc_auc"] == 1.0 and perfect["pr_auc"] == 1.0
    assert perfect["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    constant = classification_metrics(y, np.full(4, 0.5))
    assert constant["roc_auc"] == 0.5 and constant["ece"] == 0.0
    assert expected_calibration_error(np.array([1, 1]), np.array([0.2, 0.2])) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(y, np.array([0.1, np.nan, 0.5, 0.5]))


def test_the_search_space_has_the_family_as_a_dimension():
    from hyperopt.pyll.stochastic import sample
    from kpi.churn.train import search_space, trial_params

    space = search_space(["logistic_regression", "gbt"])
    rng = np.random.default_rng(0)
    drawn = [trial_params(sample(space, rng=rng)) for _ in range(40)]
    assert {d["family"] for d in drawn} == {"logistic_regression", "gbt"}
    gbt = [d for d in drawn if d["family"] == "gbt"]
    assert all(isinstance(d["max_depth"], int) and 3 <= d["max_depth"] <= 6 for d in gbt)
    assert all({"reg_param", "elastic_net"} <= set(d) for d in drawn if d["family"] == "logistic_regression")
    only = search_space(["gbt"])
    assert isinstance(only, dict) and only["family"] == "gbt"
    with pytest.raises(ValueError, match="model families"):
        search_space(["xgboost"])


def test_model_constants_agree_with_the_data_seams():
    from kpi.churn import features, sources, train

    assert train.ID == sources.ID
    assert train.LABEL == features.LABEL
    assert train.LABEL_HORIZON_DAYS == features.LABEL_HORIZON_DAYS
