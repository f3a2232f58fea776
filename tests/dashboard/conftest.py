"""Fixtures of the dashboard tests: real stores only.

- ``dash_db``: a database of its own on the session Postgres (``pg_url``) with the DDL applied, so rows
  written here never meet other areas' tests.
- ``churn_store``: one tiny real churn model per session, trained with the pipeline's own code
  (simulated sources, Spark ``train_model``, registry promotion, drift report) into its own MLflow sqlite
  store and file:// storage.
- ``dash_env``: points the process settings at those stores for one test.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"


def closed_port() -> int:
    """A local port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def dash_db(pg_url):
    """URL of a fresh database beside the session one, with the bootstrap DDL applied."""
    import psycopg
    from kpi.db import _libpq, connect, init_db

    name = f"kpi_dash_{uuid.uuid4().hex[:8]}"
    base, _, _ = _libpq(pg_url).rpartition("/")
    with connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    init_db(url)
    yield url
    with connect(pg_url, autocommit=True) as conn:
        try:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass


def _env(monkeypatch, **values: str | None) -> None:
    for key in list(os.environ):
        if key.startswith("KPI_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KPI_ENV", "test")
    for key, value in values.items():
        if value is not None:
            monkeypatch.setenv(key, value)


@pytest.fixture()
def dash_env(monkeypatch, tmp_path, dash_db):
    """Settings on an empty world: the test database, an empty MLflow store path and empty storage."""
    from kpi.settings import reload_settings

    def point(**overrides: str | None):
        values = {
            "KPI_HOME": str(tmp_path / "home"),
            "KPI_DATABASE_URL": dash_db,
            "KPI_STORAGE_URL": (tmp_path / "storage").as_uri(),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }
        values.update(overrides)
        _env(monkeypatch, **values)
        return reload_settings()

    point()
    yield point
    monkeypatch.undo()
    reload_settings()


@pytest.fixture(scope="session")
def churn_store():
    """A real champion: simulated sources -> Spark training (2 trials) -> promotion -> drift report.

    Returns a dict with ``home``, ``storage_url``, ``mlflow_uri``, ``data_url``, ``as_of`` and the
    training result. The store lives in a world-readable temp folder (the browser test's server reads it).
    """
    from kpi.settings import Settings

    pytest.importorskip("pyspark")
    base = Path(tempfile.mkdtemp(prefix="kpi-dash-store-"))
    home = base / "home"
    env = {
        "KPI_ENV": "test",
        "KPI_HOME": str(home),
        "KPI_STORAGE_URL": (base / "storage").as_uri(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
        "KPI_SPARK_MASTER": "local[1]",
        "KPI_CHURN_SEARCH_TRIALS": "2",
    }
    settings = Settings(**{k.removeprefix("KPI_").lower(): v for k, v in env.items() if k.startswith("KPI_")},
                        mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"])
    data_dir = base / "sources"
    as_of = build_champion(settings, data_dir)
    yield {"base": base, "env": env, "settings": settings, "data_url": str(data_dir), "as_of": as_of}
    shutil.rmtree(base, ignore_errors=True)


def build_champion(settings, data_dir: Path) -> dt.date:
    """Simulate sources, train, promote and monitor with the churn pipeline's own functions."""
    from kpi.churn import registry, simulate
    from kpi.churn.drift import run_drift
    from kpi.churn.train import train_model

    summary = simulate.simulate_sources(data_dir, users=400, seed=7)
    as_of = dt.date.fromisoformat(str(summary["as_of"])) if isinstance(summary, dict) and "as_of" in summary \
        else dt.date(2024, 7, 1)
    result = train_model(settings, str(data_dir), as_of, trials=2)
    registry.evaluate_and_promote(settings, result["model_version"])
    run_drift(settings, str(data_dir), as_of)
    return as_of


@pytest.fixture()
def champion_env(dash_env, churn_store):
    """Settings on the session's trained champion (and the test database)."""
    env = churn_store["env"]
    return dash_env(KPI_HOME=env["KPI_HOME"], KPI_STORAGE_URL=env["KPI_STORAGE_URL"],
                    MLFLOW_TRACKING_URI=env["MLFLOW_TRACKING_URI"])


@pytest.fixture()
def app():
    """A fresh AppTest of the dashboard's entry script (generous timeout: first imports are slow)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP), default_timeout=120)


def page_text(at) -> str:
    """Every markdown, metric, alert and caption text of the last run, for assertions on content."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "error", "warning", "info", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(parts)
