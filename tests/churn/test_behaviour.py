"""Behavioural tests of the trained champion (directional, invariance, minimum functionality).

Changes are made to the *sources* and pass through the real feature builder (pandas twin of the Spark
one), so they test what a user's activity does to the score, not one coefficient in isolation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def model(trained):
    from kpi.churn.mlflow_utils import load_version_model

    return load_version_model(trained.settings, 1)


@pytest.fixture(scope="module")
def sources(churn_data):
    from kpi.churn.features import read_sources_pandas

    return read_sources_pandas(churn_data.url)


def scores(model, sources: dict, cutoff) -> pd.Series:
    from kpi.churn.features import build_features_pandas
    from kpi.churn.sources import ID

    feats = build_features_pandas(sources, cutoff)
    return pd.Series(model.predict_proba(feats), index=feats[ID].to_numpy())


def with_payments(sources: dict, extra: pd.DataFrame) -> dict:
    out = dict(sources)
    out["payments"] = pd.concat([sources["payments"], extra], ignore_index=True)
    return out


def test_more_recent_activity_raises_the_probability_of_staying_active(model, sources, churn_data):
    from kpi.churn.features import build_features_pandas
    from kpi.churn.sources import ID

    cutoff = churn_data.as_of
    before = scores(model, sources, cutoff)
    feats = build_features_pandas(sources, cutoff)
    lapsed = feats.loc[feats["days_since_last_payment"] > 30, ID].head(40).to_numpy()
    assert len(lapsed) >= 10, "the simulated data should contain users without a payment in the last 30 days"
    pay = sources["payments"]
    template = pay.iloc[[0] * len(lapsed)].copy()
    template["CUS_CUST_ID_BUY"] = pd.array(lapsed, dtype=pay["CUS_CUST_ID_BUY"].dtype)
    template["FECHA"] = pd.Timestamp(cutoff) - pd.Timedelta(days=2)
    after = scores(model, with_payments(sources, template), cutoff)
    gained = after.loc[lapsed] - before.loc[lapsed]
    assert (gained > 0).all(), gained[gained <= 0]
    # and users untouched by the change keep their score
    others = before.index.difference(lapsed)
    assert np.array_equal(after.loc[others].to_numpy(), before.loc[others].to_numpy())


def test_seller_identity_does_not_change_the_probability(model, sources, churn_data):
    cutoff = churn_data.as_of
    before = scores(model, sources, cutoff)
    renamed = dict(sources)
    pay = sources["payments"].copy()
    # a one-to-one renaming keeps "how many distinct sellers" and changes only who they are
    pay["CUS_CUST_ID_SEL"] = "SELLER_RENAMED_" + pay["CUS_CUST_ID_SEL"].astype(str).str[::-1]
    renamed["payments"] = pay
    after = scores(model, renamed, cutoff)
    assert np.array_equal(after.sort_index().to_numpy(), before.sort_index().to_numpy())


def test_irrelevant_columns_and_row_order_do_not_change_the_probability(model, sources, churn_data):
    from kpi.churn.features import build_features_pandas

    feats = build_features_pandas(sources, churn_data.as_of)
    base = model.predict_proba(feats)
    rng = np.random.default_rng(0)
    noisy = feats.assign(
        random_noise=rng.normal(size=len(feats)), CUS_CUST_ID_BUY=rng.permutation(len(feats))
    )
    assert np.array_equal(model.predict_proba(noisy), base)
    order = rng.permutation(len(feats))
    assert np.array_equal(model.predict_proba(feats.iloc[order]), base[order])


def test_engaged_users_score_higher_than_dormant_ones(model, sources, churn_data):
    from kpi.churn.features import build_features_pandas

    feats = build_features_pandas(sources, churn_data.as_of)
    p = model.predict_proba(feats)
    dormant = (feats["pay_count_120d"] == 0).to_numpy()
    busy = (feats["pay_count_30d"] >= feats["pay_count_30d"].quantile(0.75)).to_numpy()
    assert dormant.any() and busy.any()
    assert p[busy].mean() > p[dormant].mean() + 0.2
