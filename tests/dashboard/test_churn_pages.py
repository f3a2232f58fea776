"""Score, batch and model pages against a real champion trained by the pipeline (session fixture)."""

from __future__ import annotations

import pandas as pd
import pytest

from .conftest import frame_with, page_text

pytestmark = pytest.mark.slow  # the session's champion is trained with Spark once


def _score_page(app):
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def test_score_form_is_built_from_the_champion_schema(app, champion_env, churn_store):
    from kpi.churn.registry import load_champion

    champ = load_champion(champion_env)
    _score_page(app)
    text = page_text(app)
    assert f"Champion version: {champ.version}" in text
    assert f"AUC: {champ.auc:.3f}" in text
    schema = champ.model.input_schema()
    keys = {w.key for w in app.number_input} | {w.key for w in app.selectbox}
    assert keys == {f"field.{name}" for name in schema}
    some_categorical = next(n for n, spec in schema.items() if spec["type"] == "categorical")
    assert list(app.selectbox(key=f"field.{some_categorical}").options)[:-1] == schema[some_categorical]["categories"]


def test_scoring_one_user_shows_probability_and_signed_explanation(app, champion_env, churn_store):
    from kpi.churn.registry import load_champion
    from kpi.dashboard.scoring import form_fields, form_frame, score_one

    champ = load_champion(champion_env)
    _score_page(app)
    app.button[0].click().run()  # the form's submit button
    assert not app.exception, [e.value for e in app.exception]
    fields = form_fields(champ.model.input_schema())
    expected = score_one(champ.model, form_frame(fields, {f.name: f.default for f in fields}))
    metric = next(m for m in app.metric if m.label.startswith("Probability"))
    assert metric.value == f"{expected:.1%}"
    table = frame_with(app, "contribution")
    assert set(table["feature"]) == set(champ.model.feature_names)
    chart = app.get("plotly_chart")
    assert chart and '"orientation":"h"' in chart[0].proto.spec.replace(" ", "")


def test_out_of_range_input_names_the_field(app, champion_env, churn_store):
    from kpi.churn.registry import load_champion

    champ = load_champion(champion_env)
    name, spec = next((n, s) for n, s in champ.model.input_schema().items()
                      if s["type"] == "numeric" and s["max"] is not None)
    _score_page(app)
    app.number_input(key=f"field.{name}").set_value(spec["max"] * 10 + 100)
    app.button[0].click().run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert errors and errors[0].startswith(f"Invalid input, {name}:") and "above the training range" in errors[0]
    assert not any(m.label.startswith("Probability") for m in app.metric)


def test_batch_scores_good_rows_and_lists_bad_ones(app, champion_env, churn_store):
    from kpi.churn.features import build_features_pandas, read_sources_pandas
    from kpi.churn.registry import load_champion
    from kpi.dashboard.scoring import ID, PROBABILITY

    champ = load_champion(champion_env)
    feats = build_features_pandas(read_sources_pandas(churn_store["data_url"]), churn_store["as_of"]).head(20)
    feats = feats.astype(object)
    numeric = champ.model.numeric_features[0]
    feats.loc[feats.index[3], numeric] = "lots"
    feats.loc[feats.index[7], ID] = None
    upload = feats.to_csv(index=False).encode()

    app.run()
    app.switch_page("views/batch.py").run()
    app.file_uploader(key="batch_upload").upload("users.csv", upload, "text/csv").run()
    assert not app.exception, [e.value for e in app.exception]
    text = page_text(app)
    assert "Scored rows: 18" in text and "Rejected rows: 2" in text
    rejected = frame_with(app, "reason")
    assert sorted(rejected["row"]) == [4, 8]
    assert any(r.startswith(f"{numeric}: 'lots' is not a number") for r in rejected["reason"])
    assert any(r == f"{ID}: missing" for r in rejected["reason"])
    scored = frame_with(app, PROBABILITY)
    good = feats.drop(index=[feats.index[3], feats.index[7]])
    expected = champ.model.predict_proba(good[champ.model.feature_names])
    assert scored[PROBABILITY].round(12).tolist() == pd.Series(expected).round(12).tolist()


def test_batch_accepts_the_five_source_files(app, champion_env, churn_store):
    from pathlib import Path

    from kpi.churn.features import build_features_pandas, read_sources_pandas
    from kpi.churn.sources import SOURCE_FILES

    folder = Path(churn_store["data_url"])
    app.run()
    app.switch_page("views/batch.py").run()
    app.date_input(key="batch_as_of").set_value(churn_store["as_of"])
    uploader = app.file_uploader(key="batch_upload")
    for name in SOURCE_FILES.values():
        uploader.upload(name, (folder / name).read_bytes(), "text/csv")
    uploader.run()
    assert not app.exception, [e.value for e in app.exception]
    users = len(build_features_pandas(read_sources_pandas(str(folder)), churn_store["as_of"]))
    assert f"Scored rows: {users}" in page_text(app)


def test_batch_with_wrong_columns_explains_the_expected_shape(app, champion_env, churn_store):
    app.run()
    app.switch_page("views/batch.py").run()
    app.file_uploader(key="batch_upload").upload("x.csv", b"a,b\n1,2\n", "text/csv").run()
    assert not app.exception
    errors = " ".join(e.value for e in app.error)
    assert "the CSV lacks column(s) CUS_CUST_ID_BUY" in errors


def test_model_page_compares_versions_and_shows_global_shap(app, champion_env, churn_store):
    rounds = churn_store["rounds"]
    app.run()
    app.switch_page("views/model.py").run()
    assert not app.exception, [e.value for e in app.exception]
    versions = frame_with(app, "created_at")
    assert list(versions["version"]) == [r["training"]["model_version"] for r in rounds]
    champion = next(r["promotion"]["champion_version"] for r in reversed(rounds))
    assert versions.set_index("version").loc[champion, "aliases"] == "champion"
    assert any("Holdout AUC over versions" in c.proto.spec for c in app.get("plotly_chart"))
    decisions = frame_with(app, "promotion.decision")
    assert list(decisions["promotion.decision"]) == [r["promotion"]["decision"] for r in rounds]
    assert app.get("imgs") or app.get("image"), "the SHAP summary PNG is shown"
    shap_table = frame_with(app, "mean_abs_shap")
    assert (shap_table["mean_abs_shap"].diff().dropna() <= 0).all()  # most important first


def test_new_champion_is_picked_up_without_restart(app, champion_env, churn_store, monkeypatch):
    """Moving the alias shows the new version once the TTL has passed (1 s here), no restart."""
    import time

    from kpi.settings import reload_settings
    from mlflow import MlflowClient

    monkeypatch.setenv("KPI_DASHBOARD_CHAMPION_TTL_SECONDS", "1")
    settings = reload_settings()
    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri)
    current = client.get_model_version_by_alias("churn-model", "champion").version
    other = next(str(r["training"]["model_version"]) for r in churn_store["rounds"]
                 if str(r["training"]["model_version"]) != str(current))
    app.run()
    assert f"Champion version: {current}" in page_text(app)
    try:
        client.set_registered_model_alias("churn-model", "champion", other)
        time.sleep(1.1)
        app.run()
        assert f"Champion version: {other}" in page_text(app)
    finally:
        client.set_registered_model_alias("churn-model", "champion", current)
