"""Fixtures of the serving tests (scoring API, delivered scores): the dashboard tests' real stores.

- ``churn_store``, ``dash_db``: re-exported from tests/dashboard/conftest.py (one champion trained with Spark
  per session: version 1 holds the alias, version 2 was registered and kept out).
- ``own_registry``: a private copy of that MLflow store (the sqlite file; the artifacts stay where they are,
  read-only), for tests that move the alias or break the store.
- ``serving_env``: the process settings on a registry, the session's test database and the store's storage.
"""

from __future__ import annotations

import os
import shutil

import pytest
from dashboard.conftest import churn_store, dash_db  # noqa: F401 - fixtures re-exported for this folder


@pytest.fixture()
def own_registry(churn_store, tmp_path):  # noqa: F811 - the re-exported fixture
    """``MLFLOW_TRACKING_URI`` of a copy of the session store's registry (alias moves stay in the copy)."""
    copy = tmp_path / "mlflow.db"
    shutil.copy(churn_store["base"] / "mlflow.db", copy)
    return f"sqlite:///{copy}"


@pytest.fixture()
def serving_env(monkeypatch, churn_store, dash_db, own_registry):  # noqa: F811
    """Settings on the copied registry, the test database and the session store's home and storage."""
    from kpi.settings import reload_settings

    for key in list(os.environ):
        if key.startswith("KPI_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("KPI_ENV", "test")
    monkeypatch.setenv("KPI_HOME", churn_store["env"]["KPI_HOME"])
    monkeypatch.setenv("KPI_STORAGE_URL", churn_store["env"]["KPI_STORAGE_URL"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", own_registry)
    monkeypatch.setenv("KPI_DATABASE_URL", dash_db)
    yield reload_settings()
    monkeypatch.undo()
    reload_settings()


def move_alias(settings, version: int) -> None:
    """Point the champion alias at ``version`` (what a promotion does), with MLflow's own client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri)
    client.set_registered_model_alias(settings.churn_model_name, settings.churn_champion_alias, str(version))
