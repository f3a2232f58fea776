"""Train the churn model on Spark: search, final fit, holdout evaluation, JVM-free export, registration.

:func:`train_model` is the one function behind ``job.py`` (spark-submit / SparkApplication) and the
in-process fallback of ``kpi churn train``. Steps:

1. the point-in-time training set from :mod:`kpi.churn.features` (cutoff = as_of - 60 days);
2. a deterministic split by a hash of the user id: 20% holdout, 16% validation, 64% train;
3. Hyperopt TPE (fixed seed) over the model family (``KPI_CHURN_MODEL_FAMILIES``: elastic-net logistic
   regression, Spark's gradient-boosted trees) and each family's parameters; each family's preprocessing
   is fitted once on train, and every trial is a nested MLflow run;
4. the winning trial's own fitted pipeline (its preprocessing and classifier, fitted on train) is the final
   model, scored on the holdout: no refit (a refit on train + validation repeated the winner's whole fit and
   did not raise the AUC on the true outcome, see ``docs/churn-model.md``);
5. export to :class:`kpi.churn.model.ChurnModel` (:mod:`kpi.churn.export`), parity against Spark on the
   holdout (< 1e-6), registration as a new version of ``churn-model`` with the holdout, reference
   features and SHAP artifacts on the run, and the results file ``training-runs/<as_of>/<data_version>.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpi.churn.model import FAMILIES, GBT, LOGISTIC_REGRESSION
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
GBT_MAX_BINS = 64  # >= the categories of any categorical feature plus the unknown slot
GBT_MIN_INSTANCES_PER_NODE = 20


# --- Spark pipelines ------------------------------------------------------------------------------------
def preprocessing_stages(numeric: list[str], categorical: list[str]) -> list:
    """Regression: imputation + scaling of numerics, indexing + one-hot of categoricals, one assembled vector."""
    from pyspark.ml.feature import Imputer, OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler

    if not numeric:
        # the exported layout expects a numeric block first
        raise ValueError("the churn model needs at least one numeric feature")
    imputed = [f"{c}__imputed" for c in numeric]
    stages: list = [
        Imputer(inputCols=numeric, outputCols=imputed, strategy="median"),
        VectorAssembler(inputCols=imputed, outputCol=NUMERIC_VEC),
        StandardScaler(inputCol=NUMERIC_VEC, outputCol=NUMERIC_SCALED, withMean=True, withStd=True),
    ]
    inputs = [NUMERIC_SCALED]
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


def tree_preprocessing_stages(numeric: list[str], categorical: list[str]) -> list:
    """Trees: category indices (null and unseen -> one extra index) next to the numerics, one vector.

    The numerics' missing values are filled before the pipeline (:func:`fill_missing`); the indexer's
    metadata makes the trees split categories as sets, not as ordered numbers.
    """
    from pyspark.ml.feature import StringIndexer, VectorAssembler

    if not numeric:
        raise ValueError("the churn model needs at least one numeric feature")
    indexed = [f"{c}__idx" for c in categorical]
    stages: list = [StringIndexer(inputCols=categorical, outputCols=indexed, handleInvalid="keep")] if categorical else []
    stages.append(VectorAssembler(inputCols=[*numeric, *indexed], outputCol=FEATURES_COL))
    return stages


def family_preprocessing(family: str, numeric: list[str], categorical: list[str]) -> list:
    """The preprocessing stages of ``family``."""
    if family == GBT:
        return tree_preprocessing_stages(numeric, categorical)
    return preprocessing_stages(numeric, categorical)


def classifier(params: dict[str, Any], label: str, seed: int = 42):
    """The Spark estimator of one trial: ``params["family"]`` (default: logistic regression) and its parameters."""
    from pyspark.ml.classification import GBTClassifier, LogisticRegression

    family = params.get("family", LOGISTIC_REGRESSION)
    if family == GBT:
        return GBTClassifier(
            featuresCol=FEATURES_COL,
            labelCol=label,
            maxDepth=int(params["max_depth"]),
            maxIter=int(params["max_iter"]),
            stepSize=float(params["step_size"]),
            maxBins=GBT_MAX_BINS,
            minInstancesPerNode=GBT_MIN_INSTANCES_PER_NODE,
            seed=seed,
        )
    if family != LOGISTIC_REGRESSION:
        raise ValueError(f"unknown model family {family!r} (known: {FAMILIES})")
    # inputs are already standardised
    return LogisticRegression(
        featuresCol=FEATURES_COL,
        labelCol=label,
        regParam=float(params["reg_param"]),
        elasticNetParam=float(params["elastic_net"]),
        maxIter=int(params.get("max_iter", 100)),
        tol=1e-7,
        standardization=False,
    )


def logistic_regression(params: dict[str, float], label: str):
    """The elastic-net logistic regression of one trial (inputs are already standardised)."""
    return classifier({**params, "family": LOGISTIC_REGRESSION}, label)


def build_pipeline(numeric: list[str], categorical: list[str], params: dict[str, Any], label: str, seed: int = 42):
    """The complete Spark ML pipeline of ``params["family"]``: preprocessing followed by the classifier.

    A tree pipeline expects numerics without missing values (:func:`fill_missing` with the model's
    impute values), like :class:`kpi.churn.model.ChurnModel` does before its trees.
    """
    from pyspark.ml import Pipeline

    family = params.get("family", LOGISTIC_REGRESSION)
    return Pipeline(stages=[*family_preprocessing(family, numeric, categorical), classifier(params, label, seed)])


def as_model_input(df, numeric: list[str], categorical: list[str]):
    """Numerics as double (the Imputer keeps integer types and would round medians), categoricals as string."""
    from pyspark.sql import functions as F

    casts = {c: F.col(c).cast("double") for c in numeric}
    casts.update({c: F.col(c).cast("string") for c in categorical})
    return df.withColumns(casts)


def fill_missing(df, values: dict[str, float]):
    """Missing numerics (null or NaN) replaced per column (the tree family's input)."""
    return df.fillna({c: float(v) for c, v in values.items()}) if values else df


def missing_values_for_trees(ranges: dict[str, list[float]], numeric: list[str]) -> dict[str, float]:
    """A value below every training value per numeric: "missing" becomes its own branch of the trees."""
    out = {}
    for c in numeric:
        lo = ranges.get(c, [0.0, 0.0])[0]
        out[c] = float(math.floor(lo) - max(1.0, abs(lo)))
    return out


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


SEARCH_SPACE_BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    LOGISTIC_REGRESSION: {"reg_param": (1e-5, 0.3), "elastic_net": (0.0, 1.0)},
    # bounded so that a trial stays within seconds on 2 cores at 100k users (Spark fits a tree per iteration)
    GBT: {"max_depth": (3, 5), "max_iter": (40, 100), "step_size": (0.05, 0.3)},
}


def search_space(families: list[str]):
    """Hyperopt space: the family is a dimension (``hp.choice``), each family with its own parameters."""
    from hyperopt import hp

    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"model families {families} must be a non-empty subset of {FAMILIES}")
    spaces = []
    for family in families:
        bounds = SEARCH_SPACE_BOUNDS[family]
        if family == LOGISTIC_REGRESSION:
            lo, hi = bounds["reg_param"]
            spaces.append({
                "family": family,
                "reg_param": hp.loguniform("reg_param", math.log(lo), math.log(hi)),
                "elastic_net": hp.uniform("elastic_net", *bounds["elastic_net"]),
            })
        else:
            lo, hi = bounds["step_size"]
            spaces.append({
                "family": family,
                "max_depth": hp.quniform("max_depth", *bounds["max_depth"], 1),
                "max_iter": hp.quniform("max_iter", *bounds["max_iter"], 10),
                "step_size": hp.loguniform("step_size", math.log(lo), math.log(hi)),
            })
    return spaces[0] if len(spaces) == 1 else hp.choice("family", spaces)


def budget_allows_another_trial(elapsed: float, trial_seconds: list[float], budget: float) -> bool:
    """Whether a search with a ``budget`` of seconds may start another trial ``elapsed`` seconds in.

    The next trial is taken to last as long as the longest so far: a started Spark fit cannot be
    interrupted, so a trial that would end past the budget does not start (without this rule a GBT trial
    started just before the budget ran 35 s past it). ``budget`` 0: no limit.
    """
    if not budget:
        return True
    return elapsed + max(trial_seconds, default=0.0) <= budget


def trial_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled parameters with integers where Spark wants integers."""
    out = dict(params)
    if out.get("family") == GBT:
        out["max_depth"], out["max_iter"] = int(out["max_depth"]), int(out["max_iter"])
    else:
        out.setdefault("family", LOGISTIC_REGRESSION)
        out.setdefault("max_iter", 100)
    return out


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
@dataclass
class _TrainingData:
    """The training frame, its split and the feature lists of one run."""

    frame: Any
    train: Any
    validation: Any
    holdout: Any
    numeric: list[str]
    categorical: list[str]
    rows: int


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
        settings: platform settings (MLflow URI, storage, seed, model name, model families).
        data_url: folder or URL of the five source files (validated, bad rows quarantined, before use).
        as_of: training date; features come from before ``as_of - 60 days``.
        trials: Hyperopt trials (default ``settings.churn_search_trials``).
        spark: a SparkSession (default: the active one or a local one).
        training_set: a ready Spark DataFrame ``[ID, *features, label]`` instead of building it
            from ``data_url`` (tests on synthetic frames).
        data_version: the data version tag (default: the validated sources' data version).
        numeric_features, categorical_features: the features the model uses (default: those the time
            policy makes available, :func:`kpi.churn.features.available_features`). Other columns of the training set are kept in the holdout artifact,
            so that a champion with other features can be scored on the same users.

    Returns:
        ``run_id, model_version, auc, data_version``, ``model_family`` and the other holdout metrics,
        parity and timings.
    """
    from pyspark.sql import functions as F

    from kpi.churn import mlflow_utils

    started = time.perf_counter()
    trials = int(trials or settings.churn_search_trials)
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
    others = [c for c in frame.columns if c not in {id_col, label, *numeric, *categorical}]
    # as many partitions as cores: Spark's GBT runs a few jobs per tree level, and at this size the
    # per-task overhead, not the data, sets their cost (4 -> 2 partitions halved a fit on local[2])
    frame = frame.select(id_col, *numeric, *categorical, *others, label).coalesce(_cores(spark)).cache()
    counts = {r[label]: r["count"] for r in frame.groupBy(label).count().collect()}
    n_rows = int(sum(counts.values()))
    if n_rows == 0 or len(counts) < 2:
        raise ValueError(f"training set for as_of {as_of} has {n_rows} rows and labels {sorted(counts)}: need both classes")
    train, validation, holdout = (f.cache() for f in split_frames(frame, id_col, settings.churn_seed))
    data = _TrainingData(frame, train, validation, holdout, numeric, categorical, n_rows)
    timings = {"started": started, "features_built": time.perf_counter()}

    with mlflow_utils.using_store(settings):
        return _search_fit_register(settings, data_url, as_of, trials, data, data_version, timings, source_data)


def _prepared_family(family: str, data: _TrainingData, fill: dict[str, float]):
    """``(prep, train, validation)`` of ``family``: the preprocessing ``PipelineModel`` fitted on train and
    both splits through it as cached ``[features, label]`` frames."""
    from pyspark.ml import Pipeline

    train, validation = data.train, data.validation
    if family == GBT:
        train, validation = fill_missing(train, fill), fill_missing(validation, fill)
    prep = Pipeline(stages=family_preprocessing(family, data.numeric, data.categorical)).fit(train)
    train_t = prep.transform(train).select(FEATURES_COL, LABEL).coalesce(_cores(train.sparkSession)).cache()
    val_t = prep.transform(validation).select(FEATURES_COL, LABEL).coalesce(_cores(train.sparkSession)).cache()
    train_t.count()
    val_t.count()
    return prep, train_t, val_t


def fit_final(train_val, numeric: list[str], categorical: list[str], params: dict[str, Any], seed: int,
              ranges: dict[str, list[float]], metadata: dict[str, Any] | None = None):
    """Fit the pipeline of ``params["family"]`` on ``train_val`` and export it: ``(PipelineModel, ChurnModel)``.

    Score other Spark frames with the pipeline through :func:`model_frame` (trees read their numerics
    with missing values filled, as the exported model does).
    """
    family = params.get("family", LOGISTIC_REGRESSION)
    fill = missing_values_for_trees(ranges, numeric) if family == GBT else {}
    train_val = fill_missing(train_val, fill).coalesce(_cores(train_val.sparkSession))
    fitted = build_pipeline(numeric, categorical, params, LABEL, seed).fit(train_val)
    return fitted, export_fitted(fitted, train_val, numeric, ranges, fill, metadata)


def export_fitted(fitted, train, numeric: list[str], ranges: dict[str, list[float]], fill: dict[str, float],
                  metadata: dict[str, Any] | None = None):
    """The :class:`ChurnModel` of a fitted pipeline; ``train`` (the rows it was fitted on) gives tree form defaults.

    ``fill`` is the trees' missing-value fill (:func:`missing_values_for_trees`), ignored for the regression.
    """
    from kpi.churn.export import export_pipeline

    trees = any(type(s).__name__ == "GBTClassificationModel" for s in fitted.stages)
    return export_pipeline(
        fitted, numeric_ranges=ranges, metadata=metadata,
        impute_values=fill if trees else None,
        numeric_defaults=_numeric_medians(train, numeric) if trees else None,
    )


def model_frame(df, model):
    """``df`` as the Spark pipeline of ``model`` reads it (tree models: missing numerics filled)."""
    return fill_missing(df, model.impute_values) if model.family == GBT else df


def _cores(spark) -> int:
    """The cluster's default parallelism (2 on local[2])."""
    return max(1, int(spark.sparkContext.defaultParallelism))


def _numeric_medians(df, numeric: list[str]) -> dict[str, float]:
    """Approximate median per numeric (the form default of tree models); all-null columns are left out."""
    quantiles = df.approxQuantile(numeric, [0.5], 0.001)
    return {c: float(q[0]) for c, q in zip(numeric, quantiles, strict=True) if q}


def _search_fit_register(settings: Settings, data_url: str, as_of: dt.date, trials: int, data: _TrainingData,
                         data_version: str, timings: dict[str, float], source_data=None) -> dict[str, Any]:
    """The MLflow part of :func:`train_model` (runs with MLflow pointed at the settings' store)."""
    import mlflow
    import numpy as np
    from hyperopt import STATUS_OK, Trials, fmin, tpe
    from mlflow.data.meta_dataset import MetaDataset
    from pyspark.ml import PipelineModel

    from kpi import storage
    from kpi.churn import explain, mlflow_utils
    from kpi.churn.metrics import classification_metrics

    label, id_col, horizon, seed = LABEL, ID, LABEL_HORIZON_DAYS, settings.churn_seed
    numeric, categorical = data.numeric, data.categorical
    families = list(settings.churn_model_families)
    experiment_id = mlflow_utils.experiment_id(EXPERIMENT, settings)
    dataset = mlflow.data.from_spark(
        data.frame, path=data_url, name=f"churn-training-{as_of.isoformat()}", digest=data_version[:32], targets=label
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
    train_val = data.train.unionByName(data.validation)
    ranges = _numeric_ranges(train_val, numeric)
    tree_fill = missing_values_for_trees(ranges, numeric)  # the same values fit_final derives
    prepared: dict[str, tuple[Any, Any, Any]] = {}  # family -> (prep, train, validation), built on its first trial
    best_fit: dict[str, Any] = {}  # the best trial so far: its validation AUC and fitted pipeline (the final model)

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"churn-train-{as_of.isoformat()}") as parent:
        mlflow.set_tags({**common_tags, "kind": "training"})
        mlflow.log_input(dataset, context="training")
        if source_data is not None and source_data.validation is not None:  # (issue 11) bad rows per rule
            from kpi.churn.validate import log_to_active_run

            log_to_active_run(source_data.validation, settings)
        mlflow.log_params(
            {"trials": trials, "seed": seed, "rows": data.rows, "numeric_features": ",".join(numeric),
             "categorical_features": ",".join(categorical), "search": "hyperopt-tpe",
             "model_families": ",".join(families)}
        )
        trial_results: list[dict[str, Any]] = []

        def objective(sampled: dict[str, Any]) -> dict[str, Any]:
            params = trial_params(sampled)
            family = params["family"]
            number = len(trial_results)
            trial_started = time.perf_counter()
            if family not in prepared:
                prepared[family] = _prepared_family(family, data, tree_fill)
            prep, train_t, val_t = prepared[family]
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{number:02d}", nested=True):
                mlflow.set_tags({**common_tags, "kind": "trial", "model_family": family})
                mlflow.log_input(trial_dataset, context="training")
                mlflow.log_params({**{k: v for k, v in params.items() if k != "family"}, "model_family": family})
                fitted = classifier(params, label, seed).fit(train_t)
                preds = positive_probability(fitted, val_t, [label])
                metrics = classification_metrics(preds[label].to_numpy(), preds["p"].to_numpy())
                mlflow.log_metrics({f"val_{k}": v for k, v in metrics.items()})
                seconds = time.perf_counter() - trial_started
                mlflow.log_metric("trial_seconds", seconds)
            trial_results.append({"params": params, "seconds": round(seconds, 2), **metrics})
            if not best_fit or metrics["roc_auc"] > best_fit["roc_auc"]:  # ties keep the earlier trial, as max() does
                best_fit.update(roc_auc=metrics["roc_auc"], pipeline=PipelineModel(stages=[*prep.stages, fitted]))
            log.info("trial %d (%s): AUC %.4f in %.1fs", number, family, metrics["roc_auc"], seconds)
            return {"loss": -metrics["roc_auc"], "status": STATUS_OK}

        # no trial starts that would end past the time budget at the length of the longest trial so far
        # (hyperopt's timeout stays as the backstop); at least one trial always runs
        budget = settings.churn_search_seconds
        search_started = time.perf_counter()

        def out_of_budget(_trials, *args):
            elapsed = time.perf_counter() - search_started
            return not budget_allows_another_trial(elapsed, [r["seconds"] for r in trial_results], budget), args

        fmin(objective, search_space(families), algo=tpe.suggest, max_evals=trials, trials=Trials(),
             rstate=np.random.default_rng(seed), show_progressbar=False,
             timeout=budget or None, early_stop_fn=out_of_budget)
        mlflow.log_param("trials_run", len(trial_results))
        best = max(trial_results, key=lambda r: r["roc_auc"])
        best_params = best["params"]
        family = best_params["family"]
        mlflow.log_params({f"best_{k}": v for k, v in best_params.items()})
        mlflow.set_tag("model_family", family)
        mlflow.log_metric("best_val_roc_auc", best["roc_auc"])
        for fam in families:  # the best validation AUC per family, for comparing families across runs
            scores = [r["roc_auc"] for r in trial_results if r["params"]["family"] == fam]
            if scores:
                mlflow.log_metric(f"best_val_roc_auc_{fam}", max(scores))
        timings["searched"] = time.perf_counter()
        for _, train_t, val_t in prepared.values():
            train_t.unpersist()
            val_t.unpersist()

        # final model: the winning trial's pipeline as fitted (train rows), no second fit
        final = best_fit["pipeline"]
        model = export_fitted(
            final, data.train, numeric, ranges, tree_fill,
            metadata={"as_of": as_of.isoformat(), "data_version": data_version, "params": best_params,
                      "family": family, "run_id": parent.info.run_id,
                      "trained_at": dt.datetime.now(dt.UTC).isoformat()},
        )
        holdout_pdf = data.holdout.toPandas()
        spark_preds = positive_probability(final, model_frame(data.holdout, model), [id_col])
        holdout_pdf = holdout_pdf.merge(spark_preds, on=id_col, how="inner", validate="one_to_one")
        holdout_metrics = classification_metrics(holdout_pdf[label].to_numpy(), holdout_pdf["p"].to_numpy())
        timings["fitted"] = time.perf_counter()
        numpy_p = model.predict_proba(holdout_pdf)
        parity = float(np.max(np.abs(numpy_p - holdout_pdf["p"].to_numpy()))) if len(holdout_pdf) else 0.0
        mlflow.log_metrics({f"holdout_{k}": v for k, v in holdout_metrics.items()})
        mlflow.log_metric("parity_max_abs_diff", parity)
        mlflow.set_tag("parity_passed", str(parity < PARITY_TOLERANCE).lower())

        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            holdout_file = tmp_path / "holdout.parquet"
            # every feature column of the training set, not only the model's: a champion with other
            # features scores the same users from it
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

        if model.linear is not None:
            # the training mean of the design matrix is the default SHAP background of single-row explanations
            model.metadata["design_mean"] = model.transform(reference_pdf).mean(axis=0).tolist()
        version = mlflow_utils.log_and_register(
            settings, model, input_example=holdout_pdf[model.feature_names].head(5),
            tags={**common_tags, "model_family": family, "holdout_roc_auc": f"{holdout_metrics['roc_auc']:.6f}",
                  "parity_max_abs_diff": f"{parity:.3e}"},
        )
        shap_summary = explain.log_global_explanations(
            model, holdout_pdf[model.feature_names], background=reference_pdf,
            run_id=parent.info.run_id, seed=seed, client=mlflow_utils.client(settings),
        )
        run_id = parent.info.run_id

    for f in (data.train, data.validation, data.holdout, data.frame):
        f.unpersist()
    finished = time.perf_counter()
    result = {
        "run_id": run_id,
        "model_version": int(version.version),
        "model_name": settings.churn_model_name,
        "model_family": family,
        "auc": holdout_metrics["roc_auc"],
        "data_version": data_version,
        "as_of": as_of.isoformat(),
        "data_url": data_url,
        "holdout": holdout_metrics,
        "best_params": best_params,
        "best_val_auc": best["roc_auc"],
        "trials": trials,
        "trials_run": len(trial_results),
        "trial_families": [r["params"]["family"] for r in trial_results],
        "family_best": {
            fam: max((r for r in trial_results if r["params"]["family"] == fam), key=lambda r: r["roc_auc"])
            for fam in families if any(r["params"]["family"] == fam for r in trial_results)
        },
        "rows": {"total": data.rows, "holdout": len(holdout_pdf)},
        "parity_max_abs_diff": parity,
        "parity_passed": parity < PARITY_TOLERANCE,
        "shap_top_features": list(shap_summary)[:5],
        "seconds": {"features": round(timings["features_built"] - timings["started"], 2),
                    "search": round(timings["searched"] - timings["features_built"], 2),
                    "final_model": round(timings["fitted"] - timings["searched"], 2),
                    "total": round(finished - timings["started"], 2)},
    }
    result["results_url"] = storage.join(
        settings.resolved_storage_url, "training-runs", as_of.isoformat(), f"{data_version}.json"
    )
    storage.write_text(result["results_url"], json.dumps(result, indent=1, default=str), settings)
    log.info("training run %s registered %s v%s (%s, holdout AUC %.4f)", run_id, settings.churn_model_name,
             version.version, family, holdout_metrics["roc_auc"])
    return result
