"""The JVM-free ChurnModel: export from a fitted Spark pipeline, parity with Spark, persistence, schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kpi.churn.model import ChurnModel, classification_metrics, expected_calibration_error

NUMERIC = ["recency", "amount", "visits"]
CATEGORICAL = ["card", "city"]


def synthetic_users(n: int, seed: int) -> pd.DataFrame:
    """Users with a known signal, missing numerics, integer columns and null categories."""
    rng = np.random.default_rng(seed)
    recency = rng.exponential(30, n)
    amount = rng.lognormal(3, 1, n)
    visits = rng.poisson(4, n)
    card = rng.choice(np.array(["BLACK", "GOLD", "CLASSIC", None], dtype=object), n, p=[0.2, 0.3, 0.4, 0.1])
    city = rng.choice(np.array(["Cordoba", "Rosario", "Buenos Aires"], dtype=object), n)
    logit = 1.0 - 0.05 * recency + 0.3 * np.log(amount) + 0.1 * visits + np.where(card == "BLACK", 0.7, 0.0)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    amount = np.where(rng.random(n) < 0.1, np.nan, amount)
    return pd.DataFrame(
        {"CUS_CUST_ID_BUY": np.arange(n), "recency": recency.round(), "amount": amount, "visits": visits,
         "card": card, "city": city, "label": label}
    )


def to_spark(spark, df: pd.DataFrame):
    from pyspark.sql import types as T

    schema = T.StructType([
        T.StructField("CUS_CUST_ID_BUY", T.LongType()), T.StructField("recency", T.DoubleType()),
        T.StructField("amount", T.DoubleType()), T.StructField("visits", T.LongType()),
        T.StructField("card", T.StringType()), T.StructField("city", T.StringType()),
        T.StructField("label", T.IntegerType()),
    ])
    def number(v):
        return None if pd.isna(v) else float(v)

    rows = [
        (int(r.CUS_CUST_ID_BUY), number(r.recency), number(r.amount), int(r.visits), r.card, r.city, int(r.label))
        for r in df.itertuples()
    ]
    return spark.createDataFrame(rows, schema)


@pytest.fixture(scope="module")
def fitted(spark):
    """A Spark pipeline fitted on synthetic users, its export, and a scoring set with surprises."""
    from kpi.churn.model import export_pipeline
    from kpi.churn.train import as_model_input, build_pipeline
    from pyspark.sql import functions as F

    train_pdf = synthetic_users(800, seed=1)
    train = as_model_input(to_spark(spark, train_pdf), NUMERIC, CATEGORICAL).withColumn(
        "label", F.col("label").cast("double")
    )
    pipeline = build_pipeline(NUMERIC, CATEGORICAL, {"reg_param": 0.01, "elastic_net": 0.3}, "label")
    spark_model = pipeline.fit(train)
    model = export_pipeline(spark_model, numeric_ranges={"recency": [0.0, 200.0]})
    test_pdf = synthetic_users(300, seed=2)
    # a category never seen in training and missing values in every column kind
    test_pdf.loc[0, "card"] = "PLATINUM"
    test_pdf.loc[1, "city"] = None
    test_pdf.loc[2, "recency"] = np.nan
    return spark_model, model, test_pdf


def spark_probabilities(spark, spark_model, pdf: pd.DataFrame) -> np.ndarray:
    from kpi.churn.train import as_model_input, positive_probability

    frame = as_model_input(to_spark(spark, pdf), NUMERIC, CATEGORICAL)
    out = positive_probability(spark_model, frame, ["CUS_CUST_ID_BUY"]).sort_values("CUS_CUST_ID_BUY")
    return out["p"].to_numpy()


def test_numpy_export_matches_spark_within_1e_6(spark, fitted):
    spark_model, model, test_pdf = fitted
    expected = spark_probabilities(spark, spark_model, test_pdf)
    got = model.predict_proba(test_pdf.sort_values("CUS_CUST_ID_BUY"))
    assert len(got) == len(expected) == 300
    assert np.max(np.abs(got - expected)) < 1e-6


def test_unseen_and_missing_categories_share_the_unknown_slot(fitted):
    _, model, test_pdf = fitted
    row = test_pdf.iloc[[0]].copy()
    as_null = row.assign(card=None)
    assert model.predict_proba(row)[0] == pytest.approx(model.predict_proba(as_null)[0], abs=0)


def test_missing_numeric_is_imputed_with_the_training_median(fitted):
    _, model, test_pdf = fitted
    row = test_pdf.iloc[[2]].copy()
    imputed = row.assign(recency=model.impute_values["recency"])
    assert model.predict_proba(row)[0] == model.predict_proba(imputed)[0]


def test_export_reads_the_layout_of_the_pipeline(fitted):
    _, model, _ = fitted
    assert model.numeric_features == NUMERIC
    assert model.categorical_features == CATEGORICAL
    assert sorted(model.categories["card"]) == ["BLACK", "CLASSIC", "GOLD"]
    assert len(model.coefficients) == len(model.design_columns()) == 3 + 4 + 4
    # the signal the data was generated with survives: recency lowers, BLACK raises the probability
    coef = dict(zip(model.design_columns(), model.coefficients, strict=True))
    assert coef[("recency", "")] < 0
    assert coef[("card", "BLACK")] > coef[("card", "CLASSIC")]


def test_save_and_load_round_trip_exactly(tmp_path, fitted):
    _, model, test_pdf = fitted
    loaded = ChurnModel.load(model.save(tmp_path / "m.json"))
    assert loaded.to_dict() == model.to_dict()
    assert np.array_equal(loaded.predict_proba(test_pdf), model.predict_proba(test_pdf))


def test_input_schema_describes_every_feature_for_forms(fitted):
    _, model, _ = fitted
    schema = model.input_schema()
    assert list(schema) == NUMERIC + CATEGORICAL
    assert schema["recency"] == {"type": "numeric", "min": 0.0, "max": 200.0, "default": model.impute_values["recency"]}
    assert schema["card"]["type"] == "categorical"
    assert set(schema["card"]["categories"]) == {"BLACK", "GOLD", "CLASSIC"}
    assert model.predict_proba(model.example_frame(3)).shape == (3,)


def test_missing_feature_columns_are_named_in_the_error(fitted):
    _, model, test_pdf = fitted
    with pytest.raises(ValueError, match="amount"):
        model.predict_proba(test_pdf.drop(columns=["amount"]))


def test_a_layout_that_does_not_match_the_coefficients_is_refused(fitted):
    _, model, _ = fitted
    data = model.to_dict()
    data["coefficients"] = data["coefficients"][:-1]
    with pytest.raises(ValueError, match="coefficients"):
        ChurnModel.from_dict(data)


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


def test_model_constants_agree_with_the_data_seams():
    from kpi.churn import features, sources, train

    assert train.ID == sources.ID
    assert train.LABEL == features.LABEL
    assert train.LABEL_HORIZON_DAYS == features.LABEL_HORIZON_DAYS
