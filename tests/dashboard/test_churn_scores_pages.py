"""The delivered churn scores on the dashboard: a customer looked up on "Score a user" (latest score, model
version, SHAP of their real features, loaded into the what-if form) and the Monitoring page's score
distribution and risk bands, on scores delivered by the real pipeline."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from .conftest import frame_with, page_text

pytestmark = pytest.mark.slow  # the session's champion is trained with Spark once


def _clear(settings) -> None:
    from kpi.db import connect, database_url, ensure_schema

    ensure_schema(database_url(settings), settings)
    with connect(database_url(settings)) as conn:
        conn.execute("TRUNCATE prod.churn_scores, dqm.churn_scoring_runs")


@pytest.fixture()
def delivered(champion_env, churn_store):
    """Scores of every user for two as-of dates, delivered by ``deliver_scores`` into the test database."""
    from kpi.churn.delivery import deliver_scores

    _clear(champion_env)
    days = [churn_store["as_of"] - dt.timedelta(days=7), churn_store["as_of"]]
    results = [deliver_scores(champion_env, churn_store["data_url"], day) for day in days]
    yield {"settings": champion_env, "days": days, "results": results}
    _clear(champion_env)


def _user(settings, as_of: dt.date, position: int = 5) -> dict:
    from kpi.db import connect, database_url

    with connect(database_url(settings)) as conn:
        cur = conn.execute("SELECT user_id, p_active_60d, model_version, features FROM prod.churn_scores "
                           "WHERE as_of = %s ORDER BY user_id OFFSET %s LIMIT 1", (as_of, position))
        return dict(zip([d.name for d in cur.description], cur.fetchone(), strict=True))


def _look_up(app, customer: str):
    app.run()
    app.text_input(key="lookup_id").input(customer).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def test_a_customer_s_latest_delivered_score_version_and_explanation(app, delivered):
    from kpi.churn.explain import explain_row
    from kpi.churn.registry import load_champion

    settings = delivered["settings"]
    champion = load_champion(settings)
    user = _user(settings, delivered["days"][-1])
    _look_up(app, str(user["user_id"]))
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Delivered probability of a payment in the next 60 days"] == f"{user['p_active_60d']:.1%}"
    assert metrics["Model version"] == str(champion.version)
    assert metrics["As of"] == delivered["days"][-1].isoformat()  # the latest of the two dates
    table = frame_with(app, "contribution")
    import pandas as pd

    expected = explain_row(champion.model, pd.DataFrame([user["features"]])[champion.model.feature_names])
    assert expected.attrs["p_active_60d"] == pytest.approx(user["p_active_60d"], abs=1e-9)
    shown = dict(zip(table["feature"], table["contribution"], strict=True))
    assert shown == pytest.approx(dict(zip(expected["feature"], expected["contribution"], strict=True)))
    assert len(app.get("plotly_chart")) == 1  # the customer's explanation (nothing scored in the form yet)
    assert "delivered by version" not in page_text(app)


def test_unknown_and_malformed_customer_ids_are_explained(app, delivered):
    _look_up(app, "999999999999")
    assert "No delivered score for customer 999999999999" in page_text(app)
    _look_up(app, "12ab")
    assert "'12ab' is not a whole number" in page_text(app)


def test_the_customer_s_features_load_into_the_what_if_form(app, delivered):
    from kpi.churn.registry import load_champion

    settings = delivered["settings"]
    champion = load_champion(settings)
    user = _user(settings, delivered["days"][-1], position=11)
    _look_up(app, str(user["user_id"]))
    app.button(key="lookup_to_form").click().run()
    assert not app.exception, [e.value for e in app.exception]
    schema = champion.model.input_schema()
    for name, spec in schema.items():
        value = user["features"][name]
        if spec["type"] == "numeric" and value is not None and spec["min"] <= value <= spec["max"]:
            assert app.number_input(key=f"field.{name}").value == pytest.approx(value), name
        elif spec["type"] == "categorical" and value in spec["categories"]:
            assert app.selectbox(key=f"field.{name}").value == value, name
    next(b for b in app.button if b.label == "Score").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert any(m.label.startswith("Probability of a payment") for m in app.metric)


def test_a_score_delivered_by_an_earlier_champion_says_so(app, dash_env, churn_store, delivered, tmp_path):
    from mlflow import MlflowClient

    copy = tmp_path / "mlflow.db"
    shutil.copy(churn_store["base"] / "mlflow.db", copy)
    settings = dash_env(KPI_HOME=churn_store["env"]["KPI_HOME"], KPI_STORAGE_URL=churn_store["env"]["KPI_STORAGE_URL"],
                        MLFLOW_TRACKING_URI=f"sqlite:///{copy}")
    second = churn_store["rounds"][1]["training"]["model_version"]
    MlflowClient(tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri).set_registered_model_alias("churn-model", "champion",
                                                                                      str(second))
    user = _user(settings, delivered["days"][-1])
    _look_up(app, str(user["user_id"]))
    text = page_text(app)
    assert f"delivered by version {user['model_version']}; the champion is now version {second}" in text


def test_monitoring_shows_the_score_distribution_and_risk_bands_over_time(app, delivered):
    from kpi.churn.delivery import RISK_BANDS
    from kpi.dashboard import reports

    settings = delivered["settings"]
    distribution = reports.churn_score_distribution(settings)
    assert [d.isoformat() for d in distribution["as_of"]] == [d.isoformat() for d in delivered["days"]]
    assert list(distribution["users"]) == [r["users"] for r in delivered["results"]]
    assert (distribution["p10"] <= distribution["p50"]).all() and (distribution["p50"] <= distribution["p90"]).all()
    bands = reports.churn_risk_bands(settings)
    assert set(bands["band"]) <= {name for name, _, _ in RISK_BANDS}
    assert bands.groupby("as_of")["share"].sum().to_numpy() == pytest.approx([1.0, 1.0])
    # the bands count what is in the table
    from kpi.db import connect, database_url

    (high,) = [upper for name, _, upper in RISK_BANDS if name == "high"]
    with connect(database_url(settings)) as conn:
        expected = conn.execute("SELECT count(*) FROM prod.churn_scores WHERE as_of = %s AND p_active_60d < %s",
                                (delivered["days"][-1], high)).fetchone()[0]
    latest_high = bands[(bands["as_of"] == delivered["days"][-1]) & (bands["band"] == "high")]["users"]
    assert int(latest_high.sum()) == expected

    app.run()
    app.switch_page("views/monitoring.py").run()
    assert not app.exception, [e.value for e in app.exception]
    text = page_text(app)
    assert f"Latest as-of date: {delivered['days'][-1].isoformat()}" in text
    charts = " ".join(str(c.proto) for c in app.get("plotly_chart"))
    assert "Distribution of p_active_60d per as-of date" in charts and "Share of users by churn risk band" in charts


def test_monitoring_without_delivered_scores_says_what_writes_them(app, dash_env):
    settings = dash_env()
    _clear(settings)
    app.run()
    app.switch_page("views/monitoring.py").run()
    assert not app.exception, [e.value for e in app.exception]
    assert "No churn score delivered yet" in page_text(app) and "kpi churn deliver" in page_text(app)
