"""Scores delivered to prod.churn_scores by the real pipeline: one row per user of the user base, idempotent per
as-of date, rescored by a promotion, explainable from the stored features."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from .conftest import move_alias

pytestmark = pytest.mark.slow  # the session's champion is trained with Spark once


def _rows(settings, as_of: dt.date | None = None) -> pd.DataFrame:
    from kpi.db import connect, database_url

    where, params = ("WHERE as_of = %s", (as_of,)) if as_of else ("", ())
    with connect(database_url(settings)) as conn:
        cur = conn.execute(f"SELECT as_of, user_id, p_active_60d, model_name, model_version, data_version, "
                           f"features, scored_at FROM prod.churn_scores {where} ORDER BY as_of, user_id", params)
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


@pytest.fixture()
def empty_scores(serving_env):
    """The test database without any delivered score (other tests of the session share it)."""
    from kpi.db import connect, database_url, ensure_schema

    ensure_schema(database_url(serving_env), serving_env)
    with connect(database_url(serving_env)) as conn:
        conn.execute("TRUNCATE prod.churn_scores, dqm.churn_scoring_runs")
    return serving_env


def _user_base(data_url: str) -> set[int]:
    from kpi.churn.sources import ID, SOURCE_FILES

    return set(pd.read_csv(f"{data_url}/{SOURCE_FILES['demograficos']}", usecols=[ID])[ID].dropna().astype("int64"))


def test_one_row_per_user_of_the_user_base_with_the_champion_s_scores(empty_scores, churn_store):
    from kpi.churn.delivery import deliver_scores
    from kpi.churn.features import scoring_set_pandas
    from kpi.churn.registry import load_champion

    champion = load_champion(empty_scores)
    as_of = churn_store["as_of"]
    result = deliver_scores(empty_scores, churn_store["data_url"], as_of, trigger="schedule")
    rows = _rows(empty_scores, as_of)
    users = _user_base(churn_store["data_url"])
    assert len(rows) == result["users"] == result["inserted"] == len(users)
    assert set(rows["user_id"]) == users
    assert (result["updated"], result["deleted"]) == (0, 0)
    assert set(rows["model_version"]) == {champion.version} and set(rows["model_name"]) == {champion.name}
    # the very probabilities of the model on the pipeline's features (the same scoring as `kpi churn score`)
    features = scoring_set_pandas(churn_store["data_url"], as_of, empty_scores).set_index("CUS_CUST_ID_BUY")
    expected = champion.model.predict_proba(features.loc[rows["user_id"]].reset_index())
    assert rows["p_active_60d"].to_numpy() == pytest.approx(expected, abs=1e-12)
    from kpi.db import connect, database_url

    with connect(database_url(empty_scores)) as conn:
        run = conn.execute("SELECT trigger, users, inserted, model_version FROM dqm.churn_scoring_runs "
                           "WHERE run_id = %s", (result["run_id"],)).fetchone()
    assert run == ("schedule", len(users), len(users), champion.version)


def test_a_rerun_for_the_same_date_changes_nothing(empty_scores, churn_store):
    from kpi.churn.delivery import deliver_scores

    as_of = churn_store["as_of"]
    deliver_scores(empty_scores, churn_store["data_url"], as_of)
    before = _rows(empty_scores)
    again = deliver_scores(empty_scores, churn_store["data_url"], as_of)
    assert (again["inserted"], again["updated"], again["deleted"]) == (0, 0, 0)
    pd.testing.assert_frame_equal(_rows(empty_scores), before)  # scored_at included


def test_a_promotion_rescores_the_latest_date_with_the_new_version(empty_scores, churn_store):
    from kpi.churn.delivery import deliver_scores, latest_delivered_as_of, promotion_event, scoring_inputs

    earlier, latest = churn_store["as_of"] - dt.timedelta(days=1), churn_store["as_of"]
    first = churn_store["rounds"][0]["training"]["model_version"]
    second = churn_store["rounds"][1]["training"]["model_version"]
    for day in (earlier, latest):
        deliver_scores(empty_scores, churn_store["data_url"], day)
    before = _rows(empty_scores)
    move_alias(empty_scores, second)  # what the promotion of version 2 does
    event = promotion_event({"decision": "promoted", "model_version": second, "compared_with_version": first},
                            {"data_url": churn_store["data_url"], "as_of": "2020-01-01"})
    run = scoring_inputs(empty_scores, {}, [event], dt.date(2030, 1, 1), latest_delivered_as_of(empty_scores))
    assert run == {"data_url": churn_store["data_url"], "as_of": latest.isoformat(), "trigger": "promotion"}
    result = deliver_scores(empty_scores, run["data_url"], dt.date.fromisoformat(run["as_of"]), trigger=run["trigger"])
    after = _rows(empty_scores)
    assert result["model_version"] == second and result["updated"] == result["users"] and result["inserted"] == 0
    rescored, kept = after[after["as_of"] == latest], after[after["as_of"] == earlier]
    assert set(rescored["model_version"]) == {second} and len(rescored) == len(before[before["as_of"] == latest])
    assert (rescored["scored_at"].to_numpy() > before[before["as_of"] == latest]["scored_at"].max()).all()
    pd.testing.assert_frame_equal(kept.reset_index(drop=True),
                                  before[before["as_of"] == earlier].reset_index(drop=True))  # only the latest date


def test_the_stored_features_explain_the_delivered_score(empty_scores, churn_store):
    from kpi.churn.delivery import deliver_scores
    from kpi.churn.explain import explain_row
    from kpi.churn.registry import load_champion
    from kpi.dashboard.reports import churn_score_of_user

    champion = load_champion(empty_scores)
    deliver_scores(empty_scores, churn_store["data_url"], churn_store["as_of"])
    some_user = int(_rows(empty_scores)["user_id"].iloc[17])
    score = churn_score_of_user(empty_scores, some_user)
    row = pd.DataFrame([score["features"]])[champion.model.feature_names]
    explanation = explain_row(champion.model, row)
    assert explanation.attrs["p_active_60d"] == pytest.approx(score["p_active_60d"], abs=1e-9)
    assert churn_score_of_user(empty_scores, 10**15) is None


def test_scoring_inputs_follow_params_then_promotions_then_the_schedule(serving_env):
    from kpi.churn.delivery import promotion_event, scoring_inputs

    day, latest = dt.date(2025, 3, 4), dt.date(2025, 3, 1)
    event = {"model_version": 3, "data_url": "s3://b/sources/", "as_of": "2025-02-01"}
    assert scoring_inputs(serving_env, {}, [], day, latest)["as_of"] == "2025-03-04"
    assert scoring_inputs(serving_env, {}, [], day, latest)["trigger"] == "schedule"
    assert scoring_inputs(serving_env, {}, [event], day, latest) == {
        "data_url": "s3://b/sources", "as_of": "2025-03-01", "trigger": "promotion"}
    assert scoring_inputs(serving_env, {}, [event], day, None)["as_of"] == "2025-02-01"  # nothing delivered yet
    assert scoring_inputs(serving_env, {"rescore_latest": True}, [], day, latest)["as_of"] == "2025-03-01"
    explicit = scoring_inputs(serving_env, {"as_of": "2024-12-31", "data_url": "/x"}, [event], day, latest)
    assert explicit == {"data_url": "/x", "as_of": "2024-12-31", "trigger": "params"}
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        scoring_inputs(serving_env, {"as_of": "31/12/2024"}, [], day, latest)
    assert promotion_event({"decision": "kept_champion", "model_version": 4}) is None
    assert promotion_event({"decision": "promoted", "model_version": "4", "compared_with_version": 3}) == {
        "model_version": 4, "previous_version": 3, "data_url": None, "as_of": None}
