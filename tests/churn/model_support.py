"""Shared by the model tests: ONE real training run (job.py under spark-submit) per test session.

Training is the expensive step, so the registry, SHAP, behavioural and scoring tests reuse the model this
run registered in its own MLflow sqlite store (``trained_store``). Module fixtures call the cached
function below, so the job runs once however many test modules ask for it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "pipelines" / "kpi" / "churn" / "job.py"
TRIALS = 2


@dataclass(frozen=True)
class TrainedStore:
    """A store in which job.py trained and registered one churn model."""

    settings: object
    result: dict
    stdout: str
    data_url: str


def store_settings(base: Path, model_name: str = "churn-model"):
    """Settings pointing at a private home, storage folder and sqlite MLflow store under ``base``."""
    from kpi.settings import Settings

    return Settings(
        env="test",
        home=base / "home",
        storage_url=(base / "storage").as_uri(),
        mlflow_tracking_uri=f"sqlite:///{base / 'mlflow.db'}",
        churn_model_name=model_name,
        spark_master="local[2]",
    )


def job_environment(settings) -> dict[str, str]:
    """The environment of the job: only the store settings differ from the test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPI_") and k != "MLFLOW_TRACKING_URI"}
    env.update(
        KPI_ENV="test",
        KPI_HOME=str(settings.home_dir),
        KPI_STORAGE_URL=settings.resolved_storage_url,
        MLFLOW_TRACKING_URI=settings.resolved_mlflow_uri,
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )
    return env


@functools.cache
def trained_store(base: Path, data_url: str, as_of: str) -> TrainedStore:
    """Run job.py with spark-submit on ``data_url`` (cached per arguments: once per session)."""
    settings = store_settings(base)
    spark_submit = Path(sys.executable).parent / "spark-submit"
    cmd = [
        str(spark_submit), "--master", "local[2]",
        "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.ui.enabled=false",
        "--conf", "spark.driver.memory=1g",
        str(JOB), "--data", data_url, "--as-of", as_of, "--trials", str(TRIALS),
    ]
    proc = subprocess.run(cmd, env=job_environment(settings), capture_output=True, text=True, timeout=1500, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"job.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    return TrainedStore(settings=settings, result=json.loads(last), stdout=proc.stdout, data_url=data_url)
