"""Train the churn model on Spark: search, final fit, holdout evaluation, JVM-free export, registration.

:func:`train_model` is the one function behind ``job.py`` (spark-submit / SparkApplication) and the
in-process fallback of ``kpi churn train``. Steps:

1. the point-in-time training set from :mod:`kpi.churn.features` (cutoff = as_of - 60 days);
2. a deterministic split by a hash of the user id: 20% holdout, 16% validation, 64% train;
3. Hyperopt TPE (fixed seed) over the elastic-net logistic regression's ``regParam`` and
   ``elasticNetParam``; the preprocessing is fitted once on train and every trial is a nested MLflow run;
4. the full Spark pipeline refitted on train + validation with the best parameters, scored on the holdout;
5. export to :class:`kpi.churn.model.ChurnModel`, parity against Spark on the holdout (< 1e-6),
   registration as a new version of ``churn-model`` with the holdout, reference features and SHAP
   artifacts on the run, and the results file ``training-runs/<as_of>/<data_version>.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from kpi.settings import Settings

log = logging.getLogger(__name__)

EXPERIMENT = "churn-training"
# the same names as kpi.churn.sources.ID, features.LABEL and LABEL_HORIZON_DAYS (a test checks they agree)
ID = "CUS_CUST_ID_BUY"
LABEL = "label"
LABEL_HORIZON_DAYS = 60
PARITY_TOLERANCE = 1e-6
HOLDOUT_PERCENT = 20
VALIDATION_PERCENT = 16
REFERENCE_MAX_ROWS = 50_000
HOLDOUT_ARTIFACT = "holdout/holdout.parquet"
REFERENCE_ARTIFACT = "reference/features.parquet"
FEATURES_COL = "features"
NUMERIC_VEC = "numeric_vec"
NUMERIC_SCALED = "numeric_scaled"


# --- Spark pipeline ------------------------------------------------------------------------------------
def preprocessing_stages(numeric: list[str], categorical: list[str]) -> list:
    """Imputation + scaling of numerics, indexing + one-hot of categoricals, one assembled vector."""
    from pyspark.ml.feature import Imputer, OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler

    stages: list = []
    inputs: list[str] = []
    if numeric:
        imputed = [f"{c}__imputed" for c in numeric]
        stages += [
            Imputer(inputCols=numeric, outputCols=imputed, strategy="median"),
            VectorAssembler(inputCols=imputed, outputCol=NUMERIC_VEC),
            StandardScaler(inputCol=NUMERIC_VEC, outputCol=NUMERIC_SCALED, withMean=True, withStd=True),
        ]
        inputs.append(NUMERIC_SCALED)
    else:
        # the exported layout expects a numeric block first; keep the two-assembler shape regardless
        raise ValueError("the churn model needs at least one numeric feature")
    if categorical:
        indexed = [f"{c}__idx" for c in categorical]
        onehot = [f"{c}__ohe" for c in categorical]
        stages += [
            # null and unseen categories share one extra slot; every slot keeps its own weight
            StringIndexer(inputCols=categorical, outputCols=indexed, handleInvalid="keep"),
            OneHotEncoder(inputCols=indexed, outputCols=onehot, dropLast=False),
        ]
        inputs += onehot
    stages.append(VectorAssembler(inputCols=inputs, outputCol=FEATURES_COL))
    return stages


def logistic_regression(params: dict[str, float], label: str):
    """The elastic-net logistic regression of one trial (inputs are already standardised)."""
    from pyspark.ml.classification import LogisticRegression

    return LogisticRegression(
        featuresCol=FEATURES_COL,
        labelCol=label,
        regParam=float(params["reg_param"]),
        elasticNetParam=float(params["elastic_net"]),
        maxIter=int(params.get("max_iter", 100)),
        tol=1e-7,
        standardization=False,
    )


def build_pipeline(numeric: list[str], categorical: list[str], params: dict[str, float], label: str):
    """The complete Spark ML pipeline: preprocessing followed by the logistic regression."""
    from pyspark.ml import Pipeline

    return Pipeline(stages=[*preprocessing_stages(numeric, categorical), logistic_regression(params, label)])


def as_model_input(df, numeric: list[str], categorical: list[str]):
    """Numerics as double (the Imputer keeps integer types and would round medians), categoricals as string."""
    from pyspark.sql import functions as F

    casts = {c: F.col(c).cast("double") for c in numeric}
    casts.update({c: F.col(c).cast("string") for c in categorical})
    return df.withColumns(casts)


def split_frames(df, id_col: str, seed: int):
    """Deterministic train / validation / holdout by a seeded hash of the user id."""
    from pyspark.sql import functions as F

    bucket = F.pmod(F.xxhash64(F.col(id_col).cast("string"), F.lit(str(seed))), F.lit(100))
    df = df.withColumn("_bucket", bucket)
    holdout = df.where(F.col("_bucket") < HOLDOUT_PERCENT).drop("_bucket")
    validation = df.where(
        (F.col("_bucket") >= HOLDOUT_PERCENT) & (F.col("_bucket") < HOLDOUT_PERCENT + VALIDATION_PERCENT)
    ).drop("_bucket")
    train = df.where(F.col("_bucket") >= HOLDOUT_PERCENT + VALIDATION_PERCENT).drop("_bucket")
    return train, validation, holdout


def positive_probability(fitted, df, keep: list[str]):
    """``keep`` columns plus ``p`` (probability of the positive class) as pandas."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    out = fitted.transform(df).select(*keep, vector_to_array(F.col("probability"))[1].alias("p"))
    return out.toPandas()


SEARCH_SPACE_BOUNDS = {"reg_param": (1e-5, 0.3), "elastic_net": (0.0, 1.0)}


def _search_space():
    from hyperopt import hp

    lo, hi = SEARCH_SPACE_BOUNDS["reg_param"]
    return {
        "reg_param": hp.loguniform("reg_param", math.log(lo), math.log(hi)),
        "elastic_net": hp.uniform("elastic_net", *SEARCH_SPACE_BOUNDS["elastic_net"]),
    }


# --- sessions --------------------------------------------------------------------------------------------
def spark_session(settings: Settings, app_name: str = "kpi-churn-training"):
    """The active SparkSession, or a local one on ``settings.spark_master`` (spark-submit sets its own)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # under spark-submit the master comes from its flags
        builder = builder.master(settings.spark_master)
    return builder.getOrCreate()


def _numeric_ranges(df, numeric: list[str]) -> dict[str, list[float]]:
    from pyspark.sql import functions as F

    row = df.agg(*[F.min(c).alias(f"{c}__min") for c in numeric], *[F.max(c).alias(f"{c}__max") for c in numeric])
    values = row.collect()[0].asDict()
    return {
        c: [float(values[f"{c}__min"]), float(values[f"{c}__max"])]
        for c in numeric
        if values[f"{c}__min"] is not None
    }


# --- the job ----------------------------------------------------------------------------------------------
def train_model(
    settings: Settings,
    data_url: str,
    as_of: dt.date,
    trials: int | None = None,
    spark=None,
    training_set=None,
    data_version: str | None = None,
    numeric_features: list[str] | None = None,
    categorical_features: list[str] | None = None,
) -> dict[str, Any]:
    """Search, fit, evaluate, export, register; write the results file and return its content.

    Args:
        settings: platform settings (MLflow URI, storage, seed, model name).
        data_url: folder or URL of the five source files.
        as_of: training date; features come from before ``as_of - 60 days``.
        trials: Hyperopt trials (default ``settings.churn_search_trials``).
        spark: a SparkSession (default: the active one or a local one).
        training_set: a ready Spark DataFrame ``[ID, *features, label]`` instead of building it
            from ``data_url`` (tests on synthetic frames).
        data_version: the data version tag (default: :func:`kpi.churn.sources.data_version`).
        numeric_features, categorical_features: override the feature lists of :mod:`kpi.churn.features`.

    Returns:
        ``run_id, model_version, auc, data_version`` and the other holdout metrics, parity and timings.
    """
    from pyspark.sql import functions as F

    from kpi.churn import mlflow_utils

    started = time.perf_counter()
    trials = int(trials or settings.churn_search_trials)
    seed = settings.churn_seed
    spark = spark or spark_session(settings)
    label, id_col = LABEL, ID
    source_data = None
    if numeric_features is None or categorical_features is None or training_set is None:
        from kpi.churn import features

        # (issue 11) validated sources; only the features the time policy makes available (features.py)
        if training_set is None:
            source_data = features.training_data_spark(spark, data_url, as_of, settings)
            training_set = source_data.frame
        available = source_data.features if source_data else features.FeatureSet(
            tuple(features.NUMERIC_FEATURES), tuple(features.CATEGORICAL_FEATURES))
        numeric_features = numeric_features or list(available.numeric)
        categorical_features = categorical_features or list(available.categorical)
    numeric, categorical = list(numeric_features), list(categorical_features)
    if data_version is None:
        from kpi.churn import sources

        data_version = source_data.data_version if source_data else sources.data_version(data_url)

    frame = as_model_input(training_set, numeric, categorical).withColumn(label, F.col(label).cast("double"))
    frame = frame.select(id_col, *numeric, *categorical, label).cache()
    counts = {r[label]: r["count"] for r in frame.groupBy(label).count().collect()}
    n_rows = int(sum(counts.values()))
    if n_rows == 0 or len(counts) < 2:
        raise ValueError(f"training set for as_of {as_of} has {n_rows} rows and labels {sorted(counts)}: need both classes")
    train, validation, holdout = (f.cache() for f in split_frames(frame, id_col, seed))
    features_built = time.perf_counter()

    with mlflow_utils.using_store(settings):
        return _search_fit_register(
            settings, data_url, as_of, trials, seed, spark, frame, train, validation, holdout, numeric, categorical,
            data_version, n_rows, started, features_built, source_data=source_data,
        )


def _search_fit_register(settings, data_url, as_of, trials, seed, spark, frame, train, validation, holdout,
                         numeric, categorical, data_version, n_rows, started, features_built,
                         source_data=None) -> dict[str, Any]:
    """The MLflow part of :func:`train_model` (runs with MLflow pointed at the settings' store)."""
    import mlflow
    import numpy as np
    from hyperopt import STATUS_OK, Trials, fmin, tpe
    from mlflow.data.meta_dataset import MetaDataset

    from kpi import storage
    from kpi.churn import mlflow_utils
    from kpi.churn.model import classification_metrics, export_pipeline

    label, id_col, horizon = LABEL, ID, LABEL_HORIZON_DAYS
    experiment_id = mlflow_utils.experiment_id(EXPERIMENT, settings)
    dataset = mlflow.data.from_spark(
        frame, path=data_url, name=f"churn-training-{as_of.isoformat()}", digest=data_version[:32], targets=label
    )
    # trials log the same dataset without re-profiling it (the Spark profile costs a job per call)
    trial_dataset = MetaDataset(source=dataset.source, name=dataset.name, digest=dataset.digest, schema=dataset.schema)
    common_tags = {
        "data_version": data_version,
        "as_of": as_of.isoformat(),
        "data_url": data_url,
        "label_cutoff": (as_of - dt.timedelta(days=horizon)).isoformat(),
    }
    if source_data is not None:  # (issue 11) which features the model uses and why the others were dropped
        common_tags.update(source_data.features.tags())

    from pyspark.ml import Pipeline

    prep = Pipeline(stages=preprocessing_stages(numeric, categorical)).fit(train)
    train_t = prep.transform(train).select(FEATURES_COL, label).cache()
    val_t = prep.transform(validation).select(FEATURES_COL, label).cache()
    train_t.count()
    val_t.count()

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"churn-train-{as_of.isoformat()}") as parent:
        mlflow.set_tags({**common_tags, "kind": "training"})
        mlflow.log_input(dataset, context="training")
        if source_data is not None and source_data.validation is not None:  # (issue 11) bad rows per rule
            from kpi.churn.validate import log_to_active_run

            log_to_active_run(source_data.validation, settings)
        mlflow.log_params(
            {"trials": trials, "seed": seed, "rows": n_rows, "numeric_features": ",".join(numeric),
             "categorical_features": ",".join(categorical), "search": "hyperopt-tpe"}
        )
        trial_results: list[dict[str, Any]] = []

        def objective(params: dict[str, float]) -> dict[str, Any]:
            number = len(trial_results)
            trial_started = time.perf_counter()
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{number:02d}", nested=True):
                mlflow.set_tags({**common_tags, "kind": "trial"})
                mlflow.log_input(trial_dataset, context="training")
                mlflow.log_params({"reg_param": params["reg_param"], "elastic_net": params["elastic_net"],
                                   "max_iter": 100, "model_family": "logistic_regression"})
                fitted = logistic_regression(params, label).fit(train_t)
                preds = positive_probability(fitted, val_t, [label])
                metrics = classification_metrics(preds[label].to_numpy(), preds["p"].to_numpy())
                mlflow.log_metrics({f"val_{k}": v for k, v in metrics.items()})
            trial_results.append({"params": dict(params), **metrics})
            log.info("trial %d: AUC %.4f in %.1fs (%d iterations)", number, metrics["roc_auc"],
                     time.perf_counter() - trial_started, fitted.summary.totalIterations)
            return {"loss": -metrics["roc_auc"], "status": STATUS_OK}

        search_trials = Trials()
        fmin(objective, _search_space(), algo=tpe.suggest, max_evals=trials, trials=search_trials,
             rstate=np.random.default_rng(seed), show_progressbar=False)
        best = max(trial_results, key=lambda r: r["roc_auc"])
        best_params = {**best["params"], "max_iter": 100}
        mlflow.log_params({f"best_{k}": v for k, v in best_params.items()})
        mlflow.log_metric("best_val_roc_auc", best["roc_auc"])
        searched = time.perf_counter()

        # final model: all non-holdout rows, best parameters
        train_val = train.unionByName(validation)
        final = build_pipeline(numeric, categorical, best_params, label).fit(train_val)
        holdout_pdf = holdout.toPandas()
        spark_preds = positive_probability(final, holdout, [id_col])
        holdout_pdf = holdout_pdf.merge(spark_preds, on=id_col, how="inner", validate="one_to_one")
        holdout_metrics = classification_metrics(holdout_pdf[label].to_numpy(), holdout_pdf["p"].to_numpy())

        ranges = _numeric_ranges(train_val, numeric)
        model = export_pipeline(
            final,
            numeric_ranges=ranges,
            metadata={"as_of": as_of.isoformat(), "data_version": data_version, "params": best_params,
                      "run_id": parent.info.run_id, "trained_at": dt.datetime.now(dt.UTC).isoformat()},
        )
        numpy_p = model.predict_proba(holdout_pdf)
        parity = float(np.max(np.abs(numpy_p - holdout_pdf["p"].to_numpy()))) if len(holdout_pdf) else 0.0
        mlflow.log_metrics({f"holdout_{k}": v for k, v in holdout_metrics.items()})
        mlflow.log_metric("parity_max_abs_diff", parity)
        mlflow.set_tag("parity_passed", str(parity < PARITY_TOLERANCE).lower())

        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            holdout_file = tmp_path / "holdout.parquet"
            holdout_pdf.drop(columns=["p"]).to_parquet(holdout_file, index=False)
            mlflow.log_artifact(str(holdout_file), artifact_path="holdout")
            reference = train_val.select(*numeric, *categorical)
            reference_rows = train_val.count()
            if reference_rows > REFERENCE_MAX_ROWS:
                reference = reference.sample(fraction=REFERENCE_MAX_ROWS / reference_rows, seed=seed)
            reference_pdf = reference.toPandas()
            reference_file = tmp_path / "features.parquet"
            reference_pdf.to_parquet(reference_file, index=False)
            mlflow.log_artifact(str(reference_file), artifact_path="reference")
            (tmp_path / "search.json").write_text(json.dumps(trial_results, indent=1))
            mlflow.log_artifact(str(tmp_path / "search.json"))

        # the training mean of the design matrix is the default SHAP background of single-row explanations
        model.metadata["design_mean"] = model.transform(reference_pdf).mean(axis=0).tolist()
        version = mlflow_utils.log_and_register(
            settings, model, input_example=holdout_pdf[model.feature_names].head(5),
            tags={**common_tags, "holdout_roc_auc": f"{holdout_metrics['roc_auc']:.6f}",
                  "parity_max_abs_diff": f"{parity:.3e}"},
        )

        from kpi.churn import explain

        shap_summary = explain.log_global_explanations(
            model, holdout_pdf[model.feature_names], background=reference_pdf,
            run_id=parent.info.run_id, seed=seed,
        )
        run_id = parent.info.run_id

    for f in (train_t, val_t, train, validation, holdout, frame):
        f.unpersist()
    finished = time.perf_counter()
    result = {
        "run_id": run_id,
        "model_version": int(version.version),
        "model_name": settings.churn_model_name,
        "auc": holdout_metrics["roc_auc"],
        "data_version": data_version,
        "as_of": as_of.isoformat(),
        "data_url": data_url,
        "holdout": holdout_metrics,
        "best_params": best_params,
        "best_val_auc": best["roc_auc"],
        "trials": trials,
        "rows": {"total": n_rows, "holdout": len(holdout_pdf)},
        "parity_max_abs_diff": parity,
        "parity_passed": parity < PARITY_TOLERANCE,
        "shap_top_features": list(shap_summary)[:5],
        "seconds": {"features": round(features_built - started, 2), "search": round(searched - features_built, 2),
                    "total": round(finished - started, 2)},
    }
    result["results_url"] = storage.join(
        settings.resolved_storage_url, "training-runs", as_of.isoformat(), f"{data_version}.json"
    )
    storage.write_text(result["results_url"], json.dumps(result, indent=1, default=str), settings)
    log.info("training run %s registered %s v%s (holdout AUC %.4f)", run_id, settings.churn_model_name,
             version.version, holdout_metrics["roc_auc"])
    return result
