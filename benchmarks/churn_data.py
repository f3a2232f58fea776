"""Benchmark of the churn data path: simulate, validate every row, Spark point-in-time features.

    .venv/bin/python benchmarks/churn_data.py --users 100000 [--out DIR] [--skip-validate] [--skip-features]

Prints what it measured and writes ``benchmarks/results/churn_data_<users>.json``: simulation seconds,
rows and oracle AUC; validation seconds, rows checked and rows/s (every row of every file, per file too),
the size of the clean Parquet copy against the CSVs and the peak RSS after validation; Spark (local[2])
seconds to build the training set (cutoff as_of - 60) and the scoring set (cutoff as_of) from the
validated copy; the load average at start and end (the machine may be shared: say so with any figure).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--as-of", default="2024-06-30")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="Folder for the CSVs (default: a temporary folder).")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--skip-simulate", action="store_true", help="Reuse the sources already in --out.")
    parser.add_argument("--skip-validate", action="store_true")
    parser.add_argument("--skip-features", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from kpi.churn.simulate import simulate_sources
    from kpi.churn.sources import SOURCE_FILES

    as_of = dt.date.fromisoformat(args.as_of)
    out = args.out or tempfile.mkdtemp(prefix="kpi-churn-bench-")
    result: dict = {
        "users": args.users,
        "as_of": args.as_of,
        "seed": args.seed,
        "master": args.master,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
    }
    if args.skip_simulate:
        if not args.out:
            parser.error("--skip-simulate needs --out")
        result["simulate"] = {"skipped": True, "rows": {}, "seconds": None, "oracle_auc": None}
    else:
        result["simulate"] = simulate_sources(out, args.users, as_of, seed=args.seed)
    print(
        f"simulate: {result['simulate']['seconds']} s, {result['simulate']['rows'].get('PAYMENTS.csv')} payments, "
        f"oracle AUC {result['simulate']['oracle_auc']}",
        flush=True,
    )

    # validation stores its outcome (and the clean copy the feature step reads) in a private store
    store = Path(tempfile.mkdtemp(prefix="kpi-churn-bench-store-"))
    os.environ["KPI_STORAGE_URL"] = store.as_uri()
    os.environ["KPI_HOME"] = str(store / "home")

    if not args.skip_validate:
        from kpi.churn.validate import validate_sources
        from kpi.settings import Settings

        settings = Settings(home=store / "home", storage_url=store.as_uri())
        load = os.getloadavg()[0]
        started = time.perf_counter()
        summary = validate_sources(out, settings)
        seconds = time.perf_counter() - started
        clean = Path(summary["clean_url"].removeprefix("file://"))
        csv_bytes = sum((Path(out) / n).stat().st_size for n in SOURCE_FILES.values())
        result["validate"] = {
            "seconds": round(seconds, 2),
            "rows": summary["rows"],
            "rows_per_second": round(summary["rows"] / seconds),
            "bad_rows": summary["bad_rows"],
            "success": summary["success"],
            "sampled": False,
            "csv_bytes": csv_bytes,
            "clean_parquet_bytes": sum(p.stat().st_size for p in clean.iterdir()),
            "peak_rss_mb_after_validation": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_average_at_start": load,
            "files": {name: {"rows": f["rows"], "seconds": f["seconds"],
                             "rows_per_second": round(f["rows"] / f["seconds"]) if f["seconds"] else None}
                      for name, f in summary["files"].items()},
        }
        print(f"validate: {result['validate']['seconds']} s, {summary['rows']:,} rows, "
              f"{result['validate']['rows_per_second']:,} rows/s, success {summary['success']}", flush=True)

    if not args.skip_features:
        from kpi.churn.features import scoring_set_spark, training_set_spark
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master(args.master)
            .appName("kpi-churn-data-bench")
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", "3g")
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        for name, build in (("training_set", training_set_spark), ("scoring_set", scoring_set_spark)):
            started = time.perf_counter()
            frame = build(spark, out, as_of).cache()
            rows = frame.count()
            seconds = round(time.perf_counter() - started, 2)
            result[name] = {"seconds": seconds, "rows": rows}
            if name == "training_set":
                result[name]["positive_rate"] = round(frame.agg({"label": "avg"}).first()[0], 4)
            frame.unpersist()
            print(f"{name}: {seconds} s, {rows} rows", flush=True)
        spark.stop()

    result["peak_rss_mb_python"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["load_average_at_end"] = os.getloadavg()[0]
    target = ROOT / "benchmarks" / "results" / f"churn_data_{args.users}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "simulate"} | {"written": str(target)}))
    return result


if __name__ == "__main__":
    main()
