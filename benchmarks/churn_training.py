"""Churn training benchmark (issue 3 §9, issue 11 §5): features + Spark training at 100,000 users, local[2].

Measures, and writes to ``benchmarks/results/churn_training.json``:

- wall time of source validation (as ``kpi churn train`` does before the job), of the point-in-time
  training set (Spark features + labels, built by ``train_model`` from the data URL, as the job does) and of
  training (Hyperopt search over both model families, final fit, export, parity, registration, SHAP) with
  ``--trials`` trials;
- peak RSS of this process plus its children (the Spark JVM and Python workers), sampled every 0.2 s;
- AUC on the TRUE next-60-day outcome (``OUTCOMES.csv``, after as_of) of the champion scored at as_of,
  of each model family (the non-winning family refitted on train with its best searched parameters, untimed),
  next to a reference ``HistGradientBoostingClassifier`` (a small validation-selected grid) fitted on all
  labelled rows (the issue's reference) and on the rows our model may use (train + validation), and the
  simulator's oracle AUC (its true probabilities);
- single-row scoring latency (p50/p99) of the registered pyfunc and of ``ChurnModel`` directly, batch
  scoring rows/s, and the latency of one SHAP explanation (``explain_row``) and batch SHAP rows/s.

Usage: ``.venv/bin/python benchmarks/churn_training.py [--users 100000] [--trials 12] [--search-seconds 150]
[--master local[2]]`` (the search stops starting trials after ``--search-seconds``, as training does by default).
Targets (issue 11 §5): AUC at least the reference's; features + training < 300 s; p99 single row < 5 ms;
batch >= 200,000 rows/s. The JSON records whether each target was met and the load averages (the machine
may be shared: compare figures only with their load).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "churn_training.json"


class PeakRss:
    """Peak resident memory of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001, S110 - a child may exit between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self._interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def reference_model_auc(train_pdf, score_pdf, y_true, numeric, categorical, seed: int) -> dict:
    """HistGradientBoosting on the same features: pick the best of a small grid on a validation split."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    def encode(df, categories=None):
        out = df[numeric].astype("float64").copy()
        cats = categories or {}
        for c in categorical:
            values = df[c].astype("object").where(df[c].notna(), "__missing__")
            if c not in cats:
                cats[c] = sorted(set(values))
            out[c] = pd.Categorical(values, categories=cats[c])
        return out, cats

    x, cats = encode(train_pdf)
    y = train_pdf["label"].astype(int).to_numpy()
    rng = np.random.default_rng(seed)
    is_val = rng.random(len(x)) < 0.2
    grid = [
        {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 40},
        {"learning_rate": 0.05, "max_leaf_nodes": 63, "min_samples_leaf": 80},
        {"learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 20, "l2_regularization": 1.0},
    ]
    best = None
    for params in grid:
        clf = HistGradientBoostingClassifier(max_iter=500, early_stopping=True, validation_fraction=0.1,
                                             n_iter_no_change=20, categorical_features="from_dtype",
                                             random_state=seed, **params)
        clf.fit(x[~is_val], y[~is_val])
        auc = roc_auc_score(y[is_val], clf.predict_proba(x[is_val])[:, 1])
        if best is None or auc > best[0]:
            best = (auc, params)
    clf = HistGradientBoostingClassifier(max_iter=500, early_stopping=True, validation_fraction=0.1,
                                         n_iter_no_change=20, categorical_features="from_dtype",
                                         random_state=seed, **best[1])
    clf.fit(x, y)
    xs, _ = encode(score_pdf, cats)
    return {"params": best[1], "validation_auc": best[0],
            "auc_true_outcome": float(roc_auc_score(y_true, clf.predict_proba(xs)[:, 1]))}


def refit_family(training_set, numeric: list[str], categorical: list[str], params: dict, seed: int):
    """The exported model of one family fitted on train with ``params`` (as its best trial was in training)."""
    from kpi.churn.train import ID, LABEL, _numeric_ranges, as_model_input, fit_final, split_frames
    from pyspark.sql import functions as F

    frame = as_model_input(training_set, numeric, categorical).withColumn(LABEL, F.col(LABEL).cast("double"))
    train, validation, _ = split_frames(frame, ID, seed)
    train_val = train.unionByName(validation)
    _, model = fit_final(train, numeric, categorical, params, seed, _numeric_ranges(train_val, numeric))
    return model


def latency(fn, frames, repeat: int) -> dict:
    import numpy as np

    times = []
    for i in range(repeat):
        frame = frames[i % len(frames)]
        t = time.perf_counter()
        fn(frame)
        times.append((time.perf_counter() - t) * 1000)
    arr = np.array(times[10:])  # the first calls warm caches
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "mean_ms": float(arr.mean()), "calls": len(arr)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--search-seconds", type=int, default=150, help="KPI_CHURN_SEARCH_SECONDS (0: no budget)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--as-of", default="2024-06-30")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    import pandas as pd
    from kpi.churn import features
    from kpi.churn.simulate import simulate_sources
    from kpi.settings import Settings
    from sklearn.metrics import roc_auc_score

    as_of = dt.date.fromisoformat(args.as_of)
    work = Path(tempfile.mkdtemp(prefix="kpi-churn-bench-"))
    settings = Settings(env="dev", home=work / "home", storage_url=(work / "storage").as_uri(),
                        mlflow_tracking_uri=f"sqlite:///{work / 'mlflow.db'}", spark_master=args.master,
                        churn_search_trials=args.trials, churn_seed=args.seed,
                        churn_search_seconds=args.search_seconds)
    data = work / "data"
    t0 = time.perf_counter()
    sim = simulate_sources(str(data), args.users, as_of, seed=args.seed)
    simulate_s = time.perf_counter() - t0
    print(f"simulated {args.users} users in {simulate_s:.1f}s (oracle AUC {sim['oracle_auc']:.4f})", flush=True)

    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(args.master).appName("kpi-churn-benchmark")
             .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "4g").config("spark.sql.session.timeZone", "UTC").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    from kpi.churn.registry import evaluate_and_promote
    from kpi.churn.train import train_model
    from kpi.churn.validate import ensure_valid_sources

    load_before = os.getloadavg()
    with PeakRss() as rss:
        # what `kpi churn train` does: validate the sources (the CLI), then train_model on the data URL (the
        # job, which reuses the stored validation of the same data version and builds the features itself)
        t0 = time.perf_counter()
        validated = ensure_valid_sources(str(data), settings)
        validation_s = time.perf_counter() - t0
        print(f"validation: {validation_s:.1f}s, {validated.summary['bad_rows']} bad rows", flush=True)
        t1 = time.perf_counter()
        result = train_model(settings, str(data), as_of, trials=args.trials, spark=spark)
        train_model_s = time.perf_counter() - t1
        features_s = float(result["seconds"]["features"])  # training set built, cached and split
        training_s = train_model_s - features_s
        rows = result["rows"]["total"]
        print(f"features {features_s:.1f}s ({rows} rows), training {training_s:.1f}s, holdout AUC "
              f"{result['auc']:.4f}", flush=True)
        promotion = evaluate_and_promote(settings, result["model_version"])
        t2 = time.perf_counter()
        scoring = features.scoring_set_spark(spark, validated, as_of, settings).toPandas()
        scoring_features_s = time.perf_counter() - t2
        # untimed: the same training set again, for the reference model and the other family's refit
        from kpi.churn.train import ID, split_frames

        training_set = features.training_set_spark(spark, validated, as_of, settings).cache()
        train_part, val_part, _ = split_frames(training_set, ID, args.seed)
        train_val_ids = [r[0] for r in train_part.unionByName(val_part).select(ID).collect()]
        train_pdf = training_set.toPandas()
    load_after = os.getloadavg()

    import mlflow
    from kpi.churn import explain
    from kpi.churn.mlflow_utils import load_version_model, using_store

    model = load_version_model(settings, result["model_version"])
    with using_store(settings):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.churn_model_name}/{result['model_version']}")
    outcomes = pd.read_csv(data / "OUTCOMES.csv")
    scored = scoring[["CUS_CUST_ID_BUY"]].copy()
    scored["p"] = model.predict_proba(scoring)
    merged = scored.merge(outcomes, on="CUS_CUST_ID_BUY", how="inner")
    model_auc = float(roc_auc_score(merged["active_next_60d"], merged["p"]))
    oracle_auc = float(roc_auc_score(merged["active_next_60d"], merged["p_true"]))
    score_pdf = scoring.merge(outcomes[["CUS_CUST_ID_BUY", "active_next_60d"]], on="CUS_CUST_ID_BUY")
    y_true = score_pdf["active_next_60d"].to_numpy()
    t3 = time.perf_counter()
    reference = reference_model_auc(train_pdf, score_pdf, y_true, features.NUMERIC_FEATURES,
                                    features.CATEGORICAL_FEATURES, args.seed)
    reference["fit_seconds"] = time.perf_counter() - t3
    usable = train_pdf[train_pdf["CUS_CUST_ID_BUY"].isin(set(train_val_ids))]
    reference_same_rows = reference_model_auc(usable, score_pdf, y_true, features.NUMERIC_FEATURES,
                                              features.CATEGORICAL_FEATURES, args.seed)
    family_auc = {result["model_family"]: {"auc_true_outcome": model_auc, "registered": True,
                                           "val_auc": result["best_val_auc"], "params": result["best_params"]}}
    for family, best in result["family_best"].items():
        if family not in family_auc:
            # the same features as the registered model, the family's best searched parameters
            other = refit_family(training_set, model.numeric_features, model.categorical_features, best["params"],
                                 args.seed)
            family_auc[family] = {"auc_true_outcome": float(roc_auc_score(y_true, other.predict_proba(score_pdf))),
                                  "registered": False, "val_auc": best["roc_auc"], "params": best["params"]}
    print(f"AUC on true outcome: model {model_auc:.4f} ({result['model_family']}), per family "
          f"{ {f: round(v['auc_true_outcome'], 4) for f, v in family_auc.items()} }, reference HGB "
          f"{reference['auc_true_outcome']:.4f} (same rows {reference_same_rows['auc_true_outcome']:.4f}), "
          f"oracle {oracle_auc:.4f}", flush=True)

    cols = model.feature_names
    singles = [scoring.iloc[[i]][cols] for i in range(200)]
    single_pyfunc = latency(pyfunc.predict, singles, 1010)
    single_numpy = latency(model.predict_proba, singles, 2010)
    batch = scoring[cols]
    t4 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        model.predict_proba(batch)
    batch_rows_s = reps * len(batch) / (time.perf_counter() - t4)
    t5 = time.perf_counter()
    pyfunc.predict(batch)
    pyfunc_batch_rows_s = len(batch) / (time.perf_counter() - t5)
    explain.explain_row(model, singles[0])  # compiles the tree kernel once
    single_explain = latency(lambda frame: explain.explain_row(model, frame), singles, 510)
    shap_rows = batch.head(20_000)
    t6 = time.perf_counter()
    explain.shap_values(model, shap_rows)
    shap_rows_s = len(shap_rows) / (time.perf_counter() - t6)
    load_end = os.getloadavg()

    out = {
        "benchmark": "churn_training",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "users": args.users, "trials": args.trials, "master": args.master, "cpu_count": os.cpu_count(),
        "niceness": os.nice(0),
        "load_average_before": load_before, "load_average_after": load_after,
        "payments": sim["rows"]["PAYMENTS.csv"], "simulate_seconds": round(simulate_s, 1),
        "training_rows": rows,
        "validation_seconds": round(validation_s, 1),
        "features_seconds": round(features_s, 1),
        "training_seconds": round(training_s, 1),
        "features_plus_training_seconds": round(features_s + training_s, 1),
        "validation_plus_features_plus_training_seconds": round(validation_s + features_s + training_s, 1),
        "training_breakdown_seconds": result["seconds"],
        "scoring_features_seconds": round(scoring_features_s, 1),
        "peak_rss_mb": round(rss.peak / 2**20),
        "holdout": result["holdout"],
        "best_params": result["best_params"],
        "parity_max_abs_diff": result["parity_max_abs_diff"],
        "promotion": promotion["decision"],
        "search_seconds_budget": args.search_seconds or None,
        "trials_run": result["trials_run"],
        "model_family": result["model_family"],
        "trial_families": result["trial_families"],
        "auc_true_outcome": {"model": model_auc, "per_family": {f: v["auc_true_outcome"] for f, v in family_auc.items()},
                             "reference_hgb": reference["auc_true_outcome"],
                             "reference_hgb_same_rows": reference_same_rows["auc_true_outcome"],
                             "oracle": oracle_auc, "simulator_oracle_summary": sim["oracle_auc"]},
        "families": family_auc,
        "reference_model": reference,
        "reference_model_same_rows": reference_same_rows,
        "single_row_latency": {"pyfunc": single_pyfunc, "churn_model": single_numpy, "explain_row": single_explain},
        "batch_rows_per_second": {"churn_model": round(batch_rows_s), "pyfunc": round(pyfunc_batch_rows_s),
                                  "shap_values": round(shap_rows_s)},
        "load_average_end": load_end,
    }
    out["targets"] = {
        "auc_at_least_reference": model_auc >= reference["auc_true_outcome"],
        "features_plus_training_under_300s": features_s + training_s < 300,
        "p99_single_row_under_5ms_churn_model": single_numpy["p99_ms"] < 5,
        "p99_single_row_under_5ms_pyfunc": single_pyfunc["p99_ms"] < 5,
        "batch_at_least_200k_rows_per_s": batch_rows_s >= 200_000,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps(out, default=float))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
