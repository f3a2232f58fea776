"""Fixtures shared by every churn test.

- ``spark``: ONE local SparkSession per test session (``local[2]``, 2 shuffle partitions, UI off,
  ``SPARK_LOCAL_IP=127.0.0.1``). Use it instead of building your own session; do not stop it.
- ``churn_data``: a small simulated dataset, written once per session (read-only: copy it before
  changing a file). A :class:`ChurnData` with ``url`` (local folder), ``as_of``, ``cutoff``
  (= as_of - 60 days), ``users``, ``seed`` and ``summary`` (the simulator's JSON summary, including
  ``oracle_auc``). OUTCOMES.csv in the folder holds the true next-60-day outcome after ``as_of``.
- a private ``KPI_HOME`` / ``KPI_STORAGE_URL`` for the whole session (autouse): reading sources validates
  them and stores the outcome there.
- ``copy_sources(dest)``: a helper fixture that copies ``churn_data`` into ``dest`` and returns the path,
  for tests that break or change a file.
- ``trained``: one real training run (job.py under spark-submit) on ``churn_data``, shared by the model tests.
- ``synthetic_fits``: per model family (``logistic_regression``, ``gbt``) a small Spark pipeline fitted on
  synthetic users with its JVM-free export (``model_support.SyntheticFit``), for export, parity and SHAP tests.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHURN_USERS = 3000
CHURN_AS_OF = dt.date(2024, 6, 30)
CHURN_SEED = 7


@dataclass(frozen=True)
class ChurnData:
    """A simulated source folder and the dates that go with it."""

    url: str
    as_of: dt.date
    users: int
    seed: int
    summary: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.url)

    @property
    def cutoff(self) -> dt.date:
        return self.as_of - dt.timedelta(days=60)


@pytest.fixture(scope="session", autouse=True)
def _session_storage(tmp_path_factory):
    """A private KPI home for the session: validation stores its outcome under KPI_STORAGE_URL (never the checkout).

    Tests that need their own stores still use ``kpi_env`` or explicit ``Settings``.
    """
    from kpi.settings import reload_settings

    home = tmp_path_factory.mktemp("kpi-session-home")
    keys = ("KPI_HOME", "KPI_STORAGE_URL", "MLFLOW_TRACKING_URI")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["KPI_HOME"] = str(home)
    os.environ["KPI_STORAGE_URL"] = (home / "storage").as_uri()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    reload_settings()
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reload_settings()


@pytest.fixture(scope="session")
def spark():
    """The session's local SparkSession (local[2], 2 shuffle partitions, no UI)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("kpi-churn-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def churn_data(tmp_path_factory) -> ChurnData:
    """A small simulated dataset (3,000 users, as of 2024-06-30, seed 7), written once per session."""
    from kpi.churn.simulate import simulate_sources

    out = tmp_path_factory.mktemp("churn-sources")
    summary = simulate_sources(str(out), CHURN_USERS, CHURN_AS_OF, seed=CHURN_SEED)
    return ChurnData(url=str(out), as_of=CHURN_AS_OF, users=CHURN_USERS, seed=CHURN_SEED, summary=summary)


@pytest.fixture()
def copy_sources(churn_data):
    """Copy the session dataset into a folder (``copy_sources(dest) -> Path``) to change it safely."""

    def _copy(dest: Path) -> Path:
        dest = Path(dest)
        shutil.copytree(churn_data.path, dest, dirs_exist_ok=True)
        return dest

    return _copy


@pytest.fixture(scope="session")
def trained(tmp_path_factory, churn_data):
    """One real training run (job.py under spark-submit) on ``churn_data``, shared by the model tests."""
    from model_support import trained_store

    return trained_store(
        tmp_path_factory.getbasetemp() / "churn-model-store", churn_data.url, churn_data.as_of.isoformat()
    )


@pytest.fixture(scope="session")
def synthetic_fits(spark):
    """Both model families fitted on synthetic users and exported (see ``model_support.fit_synthetic``)."""
    from model_support import fit_synthetic

    return {family: fit_synthetic(spark, family) for family in ("logistic_regression", "gbt")}
