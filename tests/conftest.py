"""Shared fixtures: a real Postgres and a real S3 server, started once per test session.

Set KPI_DATABASE_URL to run against an existing Postgres instead of the embedded one.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "reference"
AIRFLOW_DAGS_FOLDER = ROOT / "pipelines" / "kpi" / "dags"
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# spark-submit and `weed` are found next to the interpreter
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


# Airflow reads its configuration once, on first import, and several test areas import it (the
# worker-pod checks, the DAG tests): point every one of them at one session home from the start.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="kpi-test-airflow-"))


def pytest_configure(config):
    from kpi.airflow_local import airflow_environment

    os.environ.update(airflow_environment(_AIRFLOW_HOME))


def pytest_unconfigure(config):
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


def reference_file(*parts: str) -> Path:
    """A file under ../shared/reference, or skip the test with a clear message when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} is absent (../shared/reference is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory) -> str:
    """URL of a real Postgres with the bootstrap DDL applied."""
    from kpi.db import EmbeddedPostgres, init_db

    external = os.environ.get("KPI_DATABASE_URL")
    if external:
        init_db(external)
        yield external
        return
    # pytest's temp folders are private to root; the server runs as `postgres`, so it gets its own
    base = Path(tempfile.mkdtemp(prefix="kpi-test-pg-"))
    base.chmod(0o755)
    pg = EmbeddedPostgres(base / "data")
    url = pg.start()
    try:
        init_db(url)
        yield url
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini`) with buckets `kpi` and `mlflow`."""
    from kpi.s3server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("weed"), buckets=["kpi", "mlflow"]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def kpi_env(tmp_path, monkeypatch, pg_url):
    """Isolated settings for one test: its own home, storage and MLflow store; the session Postgres."""
    from kpi.settings import reload_settings

    for key in list(os.environ):
        if key.startswith("KPI_") and key not in ("KPI_DATABASE_URL",):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KPI_ENV", "test")
    monkeypatch.setenv("KPI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KPI_DATABASE_URL", pg_url)
    monkeypatch.setenv("KPI_STORAGE_URL", (tmp_path / "storage").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = reload_settings()
    yield settings
    monkeypatch.undo()
    reload_settings()


@pytest.fixture(scope="session")
def airflow_home():
    """The session's Airflow home (set up by tests/conftest.py before anything imports airflow), migrated."""
    from kpi.airflow_local import activate_airflow_home, prepare_airflow_home

    env = prepare_airflow_home(Path(os.environ["AIRFLOW_HOME"]), dags_folder=AIRFLOW_DAGS_FOLDER)
    activate_airflow_home(env)
    yield env
