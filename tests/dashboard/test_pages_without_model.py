"""Every page on an empty world and with stores down: a clear message, never an exception."""

from __future__ import annotations

import pytest

from .conftest import closed_port, page_text

PAGES = ["views/score.py", "views/batch.py", "views/model.py", "views/monitoring.py"]


@pytest.mark.parametrize("page", PAGES)
def test_page_without_any_store_content_explains_what_to_run(app, dash_env, page):
    app.run()
    app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    text = page_text(app)
    if page in ("views/score.py", "views/batch.py", "views/model.py"):
        # the MLflow store does not exist yet: the page says so and how to get one
        assert "no MLflow store" in text and "task demo" in text
    else:
        assert "No drift report yet" in text
        assert "No crypto validation run yet" in text


def test_registry_with_no_champion_says_so(app, dash_env, tmp_path):
    """An existing MLflow store with no model: the score page explains there is no champion."""
    from mlflow import MlflowClient

    settings = dash_env()
    MlflowClient(tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri).search_experiments()  # creates the real store
    app.run()
    assert not app.exception
    assert "No champion model yet" in page_text(app)
    app.switch_page("views/model.py").run()
    assert not app.exception
    assert "No version of `churn-model` is registered yet" in page_text(app)


@pytest.mark.parametrize("page", PAGES[:3])
def test_unreachable_mlflow_server_is_named(app, dash_env, page):
    port = closed_port()
    dash_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    app.run()
    app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    errors = " ".join(e.value for e in app.error)
    assert f"MLflow at http://127.0.0.1:{port} is unreachable" in errors


def test_unreachable_warehouse_and_storage_are_named(app, dash_env, tmp_path):
    port = closed_port()
    dash_env(KPI_DATABASE_URL=f"postgresql://postgres:secret@127.0.0.1:{port}/kpi",
             KPI_STORAGE_URL="s3://kpi/prefix", KPI_S3_ENDPOINT_URL=f"http://127.0.0.1:{closed_port()}",
             AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    app.run()
    app.switch_page("views/monitoring.py").run()
    assert not app.exception, [e.value for e in app.exception]
    errors = " ".join(e.value for e in app.error)
    assert f"the warehouse at postgresql://postgres:***@127.0.0.1:{port}/kpi is unreachable" in errors
    assert "secret" not in errors  # the password never reaches the page
    assert "object storage at s3://kpi/prefix is unreachable" in errors


def test_warehouse_without_url_explains_how_to_start_it(app, dash_env):
    dash_env(KPI_DATABASE_URL=None)
    app.run()
    app.switch_page("views/monitoring.py").run()
    assert not app.exception
    assert "KPI_DATABASE_URL is unset" in " ".join(e.value for e in app.error)
