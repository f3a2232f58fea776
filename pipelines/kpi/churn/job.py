"""Spark entry point of churn training: ``spark-submit kpi/churn/job.py --data URL --as-of D [--trials N]``.

The same file is the ``mainApplicationFile`` of the SparkApplication in the cluster. It reads the
platform settings from the environment (``KPI_*``, ``MLFLOW_TRACKING_URI``), calls
:func:`kpi.churn.train.train_model` and prints the result document as the last line of stdout (the
document is also written to ``training-runs/<as_of>/<data_version>.json`` under ``KPI_STORAGE_URL``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# run as a script, Python puts this folder first on sys.path; drop it so `features`, `model`... are
# only importable as kpi.churn.* and never shadow a library
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import datetime as dt
import json
import logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--data URL --as-of YYYY-MM-DD [--trials N]``."""
    parser = argparse.ArgumentParser(prog="kpi-churn-training", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder or URL (file://, s3://) of the five source CSVs")
    parser.add_argument("--as-of", required=True, type=dt.date.fromisoformat, help="training date YYYY-MM-DD")
    parser.add_argument("--trials", type=int, default=None, help="hyper-parameter search trials")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, register and report; exit status 0 on success, 1 with the error on stderr otherwise."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # keeps the result JSON the last line of output
    args = parse_args(argv)
    from pyspark.sql import SparkSession

    from kpi.churn.train import train_model
    from kpi.settings import get_settings

    settings = get_settings()
    # spark-submit / the operator decide master and resources; tests and the CLI pass --master local[n]
    spark = SparkSession.builder.appName(f"kpi-churn-training-{args.as_of.isoformat()}").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        result = train_model(settings, args.data, args.as_of, trials=args.trials, spark=spark)
    except Exception as exc:
        from kpi.churn.spark_submit import describe_job_error, write_job_error

        logging.getLogger("kpi.churn.job").exception("training failed")
        error = describe_job_error(exc)
        # the same document in storage: a SparkApplication's submitter reads it where stdout is out of reach
        write_job_error(settings, args.data, args.as_of, error)
        print(json.dumps({"ok": False, **error}), flush=True)
        return 1
    finally:
        spark.stop()
    print(json.dumps({"ok": True, **result}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
