"""Spark GBT settings against the true outcome at 100,000 users (issue 11 §5: is the reference's AUC reachable?).

For each setting (``--configs``, JSON list of ``{"max_depth", "max_iter", "step_size"[, "max_bins",
"min_instances"]}``) fits training's GBT pipeline (``kpi.churn.train.fit_final``) on the train split, as the
search's trials do, and reports the ROC AUC of every prefix of its trees (every 10th) on the validation split
and on the TRUE next-60-day outcome (``OUTCOMES.csv``) of all users scored at as_of, next to the
HistGradientBoosting reference of ``benchmarks/churn_training.py`` on the same training set. Prefixes are exact:
a GBT's first ``n`` trees do not depend on later ones, so one fit of ``max_iter`` trees gives every
``n <= max_iter``. Nothing here selects by the true outcome: ``best_n_by_validation`` picks by validation.

Writes ``benchmarks/results/churn_gbt_sweep.json`` (with load averages: fit times depend on the machine's load).
Usage: ``.venv/bin/python benchmarks/churn_gbt_sweep.py [--users 100000] [--configs '[...]']``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "churn_gbt_sweep.json"
DEFAULT_CONFIGS = [
    {"max_depth": 3, "max_iter": 90, "step_size": 0.1487},
    {"max_depth": 3, "max_iter": 120, "step_size": 0.3},
    {"max_depth": 3, "max_iter": 90, "step_size": 0.1487, "max_bins": 128},
    {"max_depth": 4, "max_iter": 100, "step_size": 0.1, "max_bins": 128},
    {"max_depth": 5, "max_iter": 100, "step_size": 0.1},
]


def per_tree_margins(model, frame):
    """``(rows, trees)`` contribution of each tree of ``model`` (a tree ``ChurnModel``) to the margin."""
    import numpy as np
    from kpi.churn.model import _tree_kernels

    x = np.ascontiguousarray(model.tree_input(frame))
    kernel = _tree_kernels()["margin"]
    cols = [kernel(x, model._t_roots[t : t + 1], model._t_feature, model._t_threshold, model._t_child,
                   model._t_value, model._t_is_cat, model._t_cat_right) for t in range(len(model._t_roots))]
    return np.stack(cols, axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--configs", default=json.dumps(DEFAULT_CONFIGS))
    parser.add_argument("--as-of", default="2024-06-30")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import numpy as np
    import pandas as pd
    from churn_training import reference_model_auc
    from kpi.churn import features
    from kpi.churn import train as T
    from kpi.churn.simulate import simulate_sources
    from kpi.settings import Settings
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from sklearn.metrics import roc_auc_score

    as_of = dt.date.fromisoformat(args.as_of)
    work = Path(tempfile.mkdtemp(prefix="kpi-churn-gbt-sweep-"))
    settings = Settings(env="dev", home=work / "home", storage_url=(work / "storage").as_uri(),
                        mlflow_tracking_uri=f"sqlite:///{work / 'mlflow.db'}", churn_seed=args.seed)
    sim = simulate_sources(str(work / "data"), args.users, as_of, seed=args.seed)
    spark = (SparkSession.builder.master("local[2]").appName("kpi-churn-gbt-sweep")
             .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").config("spark.driver.memory", "4g")
             .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    numeric, categorical = features.NUMERIC_FEATURES, features.CATEGORICAL_FEATURES
    training = features.training_set_spark(spark, str(work / "data"), as_of, settings)
    frame = T.as_model_input(training, numeric, categorical).withColumn(T.LABEL, F.col(T.LABEL).cast("double"))
    frame = frame.coalesce(2).cache()
    n_rows = frame.count()
    train, validation, _ = (f.cache() for f in T.split_frames(frame, T.ID, args.seed))
    ranges = T._numeric_ranges(train.unionByName(validation), numeric)  # as training derives them
    val_pdf = validation.toPandas()
    y_val = val_pdf[T.LABEL].to_numpy()
    outcomes = pd.read_csv(work / "data" / "OUTCOMES.csv")
    score_pdf = features.scoring_set_spark(spark, str(work / "data"), as_of, settings).toPandas().merge(
        outcomes[[T.ID, "active_next_60d"]], on=T.ID)
    y_true = score_pdf["active_next_60d"].to_numpy()
    reference = reference_model_auc(frame.toPandas(), score_pdf, y_true, numeric, categorical, args.seed)

    rows = []
    for config in json.loads(args.configs):
        config = dict(config)
        T.GBT_MAX_BINS = int(config.pop("max_bins", 64))
        T.GBT_MIN_INSTANCES_PER_NODE = int(config.pop("min_instances", 20))
        params = {"family": "gbt", **config}
        load_before = os.getloadavg()
        started = time.perf_counter()
        _, model = T.fit_final(train, numeric, categorical, params, args.seed, ranges)
        fit_s = time.perf_counter() - started
        val_curve = np.cumsum(per_tree_margins(model, val_pdf), axis=1)
        true_curve = np.cumsum(per_tree_margins(model, score_pdf), axis=1)
        val_auc = [float(roc_auc_score(y_val, val_curve[:, n])) for n in range(val_curve.shape[1])]
        best = int(np.argmax(val_auc))
        every = sorted({*range(9, len(val_auc), 10), len(val_auc) - 1})
        rows.append({
            **params, "max_bins": T.GBT_MAX_BINS, "min_instances_per_node": T.GBT_MIN_INSTANCES_PER_NODE,
            "fit_seconds": round(fit_s, 1), "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "best_n_by_validation": best + 1, "val_auc_at_best": val_auc[best],
            "true_auc_at_best": float(roc_auc_score(y_true, true_curve[:, best])),
            "val_auc_by_trees": {n + 1: val_auc[n] for n in every},
            "true_auc_by_trees": {n + 1: float(roc_auc_score(y_true, true_curve[:, n])) for n in every},
        })
        print(json.dumps(rows[-1]), flush=True)
        # written after every setting: a long sweep stopped half-way keeps what it measured
        out = {"benchmark": "churn_gbt_sweep", "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "users": args.users, "training_rows": n_rows, "oracle_auc": sim["oracle_auc"],
               "reference_hgb": reference, "settings": rows,
               "best_true_auc_at_validation_choice": max(r["true_auc_at_best"] for r in rows)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
