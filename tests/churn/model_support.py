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
        churn_search_seconds=0,  # every requested trial runs, whatever the machine's load
    )


def job_environment(settings) -> dict[str, str]:
    """The environment of the job: only the store settings differ from the test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPI_") and k != "MLFLOW_TRACKING_URI"}
    env.update(
        KPI_ENV="test",
        KPI_HOME=str(settings.home_dir),
        KPI_STORAGE_URL=settings.resolved_storage_url,
        KPI_CHURN_SEARCH_SECONDS="0",  # the tests count trials: no time budget on a loaded machine
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


# --- small synthetic Spark models of both families (no training run needed) ------------------------------
NUMERIC = ["recency", "amount", "visits"]
CATEGORICAL = ["card", "city"]
SYNTHETIC_PARAMS = {
    "logistic_regression": {"family": "logistic_regression", "reg_param": 0.01, "elastic_net": 0.3},
    "gbt": {"family": "gbt", "max_depth": 4, "max_iter": 15, "step_size": 0.3},
}


def synthetic_users(n: int, seed: int):
    """Users with a known signal, missing numerics, integer columns and null categories."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    recency = rng.exponential(30, n)
    amount = rng.lognormal(3, 1, n)
    visits = rng.poisson(4, n)
    card = rng.choice(np.array(["BLACK", "GOLD", "CLASSIC", None], dtype=object), n, p=[0.2, 0.3, 0.4, 0.1])
    city = rng.choice(np.array(["Cordoba", "Rosario", "Buenos Aires", "Salta"], dtype=object), n)
    logit = (1.0 - 0.05 * recency + 0.3 * np.log(amount) + 0.1 * visits + np.where(card == "BLACK", 0.7, 0.0)
             + np.where((city == "Salta") & (recency > 20), -1.0, 0.0))
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    amount = np.where(rng.random(n) < 0.1, np.nan, amount)
    return pd.DataFrame(
        {"CUS_CUST_ID_BUY": np.arange(n), "recency": recency.round(), "amount": amount, "visits": visits,
         "card": card, "city": city, "label": label}
    )


def to_spark(spark, df):
    """The synthetic users as a Spark frame with nulls where pandas has NaN/None."""
    import pandas as pd
    from pyspark.sql import types as T

    schema = T.StructType([
        T.StructField("CUS_CUST_ID_BUY", T.LongType()), T.StructField("recency", T.DoubleType()),
        T.StructField("amount", T.DoubleType()), T.StructField("visits", T.LongType()),
        T.StructField("card", T.StringType()), T.StructField("city", T.StringType()),
        T.StructField("label", T.IntegerType()),
    ])

    def number(v):
        return None if pd.isna(v) else float(v)

    rows = [
        (int(r.CUS_CUST_ID_BUY), number(r.recency), number(r.amount), int(r.visits), r.card, r.city, int(r.label))
        for r in df.itertuples()
    ]
    return spark.createDataFrame(rows, schema)


@dataclass(frozen=True)
class SyntheticFit:
    """A Spark pipeline fitted on synthetic users, its JVM-free export and a scoring set with surprises."""

    family: str
    spark_model: object
    model: object
    fill: dict
    test: object

    def spark_probabilities(self, spark, pdf):
        """Spark's probabilities for ``pdf`` in the order of its ids."""
        from kpi.churn.train import GBT, as_model_input, fill_missing, positive_probability

        frame = as_model_input(to_spark(spark, pdf), NUMERIC, CATEGORICAL)
        if self.family == GBT:
            frame = fill_missing(frame, self.fill)
        out = positive_probability(self.spark_model, frame, ["CUS_CUST_ID_BUY"]).sort_values("CUS_CUST_ID_BUY")
        return out["p"].to_numpy()


def fit_synthetic(spark, family: str, rows: int = 800) -> SyntheticFit:
    """Fit the churn pipeline of ``family`` on synthetic users the way training does, and export it."""
    import numpy as np
    from kpi.churn.export import export_pipeline
    from kpi.churn.train import (
        GBT,
        _numeric_ranges,
        as_model_input,
        build_pipeline,
        fill_missing,
        missing_values_for_trees,
    )
    from pyspark.sql import functions as F

    train = as_model_input(to_spark(spark, synthetic_users(rows, seed=1)), NUMERIC, CATEGORICAL).withColumn(
        "label", F.col("label").cast("double")
    )
    ranges = _numeric_ranges(train, NUMERIC)
    fill = missing_values_for_trees(ranges, NUMERIC) if family == GBT else {}
    pipeline = build_pipeline(NUMERIC, CATEGORICAL, SYNTHETIC_PARAMS[family], "label", seed=3)
    spark_model = pipeline.fit(fill_missing(train, fill) if fill else train)
    model = export_pipeline(spark_model, numeric_ranges={"recency": [0.0, 200.0]},
                            impute_values=fill or None, numeric_defaults={"recency": 21.0} if fill else None)
    test = synthetic_users(300, seed=2)
    # a category never seen in training and missing values in every column kind
    test.loc[0, "card"] = "PLATINUM"
    test.loc[1, "city"] = None
    test.loc[2, "recency"] = np.nan
    test.loc[3, "visits"] = 0
    return SyntheticFit(family, spark_model, model, fill, test)


def scoring_module_imports() -> set[str]:
    """Top-level package names that kpi/churn/model.py (the bundled scoring code) imports, in functions too."""
    import ast

    import kpi.churn.model as module

    tree = ast.parse(Path(module.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return names - {"__future__"}
