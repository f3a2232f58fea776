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
import json
import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"


def stop_process(proc, timeout: float = 15) -> None:
    """Terminate a server the test started; kill it when it does not stop in ``timeout`` seconds."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
def churn_store(tmp_path_factory):
    """A real champion: simulated sources -> Spark training -> promotion -> second version -> drift report.

    Returns a dict with ``env`` (the variables that point at the stores), ``settings``, ``rounds``
    (training and promotion results), ``drift``, ``data_url`` and ``as_of``. Built once per test session
    under the session's temp folder (the notebook tests reuse it); ``KPI_TEST_CHURN_STORE=<dir>`` keeps it
    in ``<dir>`` across sessions while iterating on pages.
    """
    pytest.importorskip("pyspark")
    base = Path(os.environ.get("KPI_TEST_CHURN_STORE") or tmp_path_factory.getbasetemp() / "dash-churn-store")
    return churn_store_at(base)


def churn_store_at(base: Path) -> dict:
    """Build the churn store in ``base`` unless a previous build left its summary there."""
    from kpi.settings import Settings

    base.mkdir(parents=True, exist_ok=True)
    env = {
        "KPI_HOME": str(base / "home"),
        "KPI_STORAGE_URL": (base / "storage").as_uri(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
    }
    settings = Settings(env="test", home=base / "home", storage_url=env["KPI_STORAGE_URL"],
                        mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"], spark_master="local[1]",
                        churn_search_trials=1,
                        # a few hundred holdout rows make the calibration error noisy; the guardrail stays on
                        churn_max_calibration_error=0.25)
    summary = base / "store.json"
    if summary.exists():
        built = json.loads(summary.read_text())
        built["as_of"] = dt.date.fromisoformat(built["as_of"])
    else:
        built = build_champion(settings, base)
        summary.write_text(json.dumps(built, default=str))
    return {"base": base, "env": env, "settings": settings, **built}


AS_OF = dt.date(2024, 7, 1)


def build_champion(settings, base: Path) -> dict:
    """A champion and a second version through the churn pipeline's own functions.

    Spark trains once (the slow part: one round, one trial); the second version is the same exported
    model registered again from a new run, as a retrain on unchanged data would be, and goes through
    the real promotion decision (it cannot beat the champion by the margin). Drift then compares shifted
    sources with the champion's reference features.
    """
    from kpi.churn import registry, simulate
    from kpi.churn.drift import run_drift
    from kpi.churn.train import train_model

    first, shifted = base / "sources", base / "sources-shifted"
    simulate.simulate_sources(str(first), users=1500, as_of=AS_OF, seed=7)
    simulate.simulate_sources(str(shifted), users=1500, as_of=AS_OF, seed=8, scenario="shifted")
    trained = train_model(settings, str(first), AS_OF, trials=1)
    rounds = [{"training": trained, "promotion": registry.evaluate_and_promote(settings, trained["model_version"])}]
    rounds.append(register_again(settings, trained))
    drift = run_drift(settings, str(shifted), AS_OF, engine="pandas")
    return {"rounds": rounds, "drift": drift, "data_url": str(first), "as_of": AS_OF}


def register_again(settings, trained: dict) -> dict:
    """Register the trained model once more from a new run (holdout, metrics, SHAP) and let promotion decide."""
    import mlflow
    import pandas as pd
    from kpi.churn import explain, mlflow_utils, registry
    from kpi.churn.train import EXPERIMENT, HOLDOUT_ARTIFACT

    model = mlflow_utils.load_version_model(settings, trained["model_version"])
    with tempfile.TemporaryDirectory() as tmp:
        holdout_file = mlflow_utils.download_run_artifact(settings, trained["run_id"], HOLDOUT_ARTIFACT, tmp)
        holdout = pd.read_parquet(holdout_file)
        mlflow_utils.configure(settings)
        with mlflow.start_run(experiment_id=mlflow_utils.experiment_id(EXPERIMENT, settings),
                              run_name="churn-train-again") as run:
            mlflow.log_artifact(str(holdout_file), artifact_path="holdout")
            mlflow.log_metrics({"holdout_roc_auc": trained["auc"], "parity_max_abs_diff": 0.0})
            version = mlflow_utils.log_and_register(settings, model, holdout[model.feature_names].head(5),
                                                    tags={"as_of": trained["as_of"]})
            explain.log_global_explanations(model, holdout[model.feature_names], holdout[model.feature_names],
                                            run_id=run.info.run_id)
    training = {"model_version": int(version.version), "run_id": run.info.run_id, "auc": trained["auc"]}
    return {"training": training, "promotion": registry.evaluate_and_promote(settings, version.version)}


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


def frame_with(at, column: str):
    """The first DataFrame shown on the page that has ``column``."""
    for element in at.dataframe:
        if column in element.value.columns:
            return element.value
    raise AssertionError(f"no table with column {column!r} on the page")
