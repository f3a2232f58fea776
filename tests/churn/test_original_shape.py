"""Sources in their original shape (snapshot tables without SNAPSHOT_DATE) train, score and monitor end to end.

The sources are the simulator's ``--undated-snapshots`` shape scaled up, with the reference seed-data rows
appended verbatim (the exact shape of ``../shared/reference/seed-data``) and a few hostile rows of the
kinds the issue found: three ``MAU_MP_1`` above 31, ``1e999`` in a recent payment, a new ``INVERSION``.
Everything runs through the real CLI: spark-submit on a local master, a real MLflow store.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

AS_OF = dt.date(2024, 6, 30)
USERS = 4000


def _seed_folder() -> Path:
    from tests.conftest import reference_file

    return reference_file("seed-data", "PAYMENTS.csv").parent


@pytest.fixture(scope="module")
def original_shape(tmp_path_factory) -> Path:
    """Undated simulated sources + the seed-data rows verbatim + a few hostile rows."""
    from kpi.churn.simulate import simulate_sources
    from kpi.churn.sources import SOURCE_FILES

    seed = _seed_folder()
    out = tmp_path_factory.mktemp("original-shape")
    simulate_sources(str(out), USERS, AS_OF, seed=5, dated_snapshots=False)
    for name in SOURCE_FILES.values():
        ours = (out / name).read_text().split("\n")
        theirs = (seed / name).read_text().rstrip("\n").split("\n")
        assert ours[0] == theirs[0], f"{name}: the simulator's header differs from the seed data's"
        (out / name).write_text("\n".join([*[ln for ln in ours if ln], *theirs[1:]]) + "\n")

    def edit(name: str, line: int, column: str, value: str) -> None:
        lines = (out / name).read_text().split("\n")
        header = lines[0].split(",")
        fields = lines[line - 1].split(",")
        fields[header.index(column)] = value
        lines[line - 1] = ",".join(fields)
        (out / name).write_text("\n".join(lines))

    for line in (2, 3, 4):
        edit("ACTIVE_USER.csv", line, "MAU_MP_1", "45")
    payments = (out / "PAYMENTS.csv").read_text().split("\n")
    recent = next(i for i in range(len(payments) - 1, 0, -1) if payments[i].startswith("2024-06-2"))
    edit("PAYMENTS.csv", recent + 1, "SPENT", "1e999")
    edit("DINERO_CUENTA.csv", 5, "INVERSION", "Crypto")
    return out


def _cli(*args: str) -> dict:
    from kpi.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, list(args))
    return {"exit_code": result.exit_code, **json.loads(result.stdout.strip().splitlines()[-1])}


def test_original_shape_trains_scores_and_monitors_end_to_end(kpi_env, original_shape, tmp_path):
    from kpi.churn.features import SNAPSHOT_FEATURES
    from kpi.churn.mlflow_utils import client

    trained = _cli("churn", "train", "--data", str(original_shape), "--as-of", AS_OF.isoformat(), "--trials", "2")
    assert trained["exit_code"] == 0 and trained["ok"] is True, trained
    assert trained["backend"] == "local" and trained["model_version"] == 1
    quality = trained["source_validation"]["bad_rows_by_file"]
    assert quality["ACTIVE_USER.csv"]["by_rule"] == {"out_of_range": 3}
    assert quality["PAYMENTS.csv"]["by_rule"] == {"not_a_number": 1}
    assert quality["DINERO_CUENTA.csv"] == {"bad_rows": 1, "quarantined_rows": 0, "by_rule": {"unknown_category": 1}}

    # the model uses only what the time policy makes available: its signature, run and version say so
    import mlflow

    mlflow_client = client(kpi_env)
    run = mlflow_client.get_run(trained["run_id"])
    used = run.data.tags["features_used"].split(",")
    dropped = json.loads(run.data.tags["features_dropped"])
    assert set(dropped) == {*SNAPSHOT_FEATURES, "investment_status"}
    assert not set(used) & set(dropped) and {"pay_count_30d", "age", "card_type"} <= set(used)
    assert all("has no SNAPSHOT_DATE" in reason for reason in dropped.values())
    version = mlflow_client.get_model_version(kpi_env.churn_model_name, "1")
    assert version.tags["features_used"] == run.data.tags["features_used"]
    assert json.loads(version.tags["features_dropped"]) == dropped
    from kpi.churn.mlflow_utils import using_store

    with using_store(kpi_env):
        info = mlflow.models.get_model_info(f"models:/{kpi_env.churn_model_name}/1")
    assert info.signature.inputs.input_names() == used

    # the quarantined rows are on the run: counts per rule and the records themselves
    assert run.data.metrics["bad_rows.ACTIVE_USER.out_of_range"] == 3
    assert run.data.metrics["bad_rows.PAYMENTS.not_a_number"] == 1
    from kpi.churn.mlflow_utils import download_run_artifact

    bad = pd.read_parquet(download_run_artifact(kpi_env, trained["run_id"], "source-validation/bad_rows.parquet",
                                                tmp_path))
    assert set(zip(bad["file"], bad["column"], bad["rule"], bad["value"])) == {
        ("ACTIVE_USER.csv", "MAU_MP_1", "out_of_range", "45"),
        ("PAYMENTS.csv", "SPENT", "not_a_number", "1e999"),
        ("DINERO_CUENTA.csv", "INVERSION", "unknown_category", "Crypto"),
    }
    assert sorted(bad.loc[bad["file"] == "ACTIVE_USER.csv", "line"]) == [2, 3, 4]

    # scoring: every user of the base gets a finite probability (the 1e999 payment is left out, not NaN)
    output = tmp_path / "scores.csv"
    scored = _cli("churn", "score", "--data", str(original_shape), "--as-of", AS_OF.isoformat(), "--output", str(output))
    assert scored["exit_code"] == 0, scored
    scores = pd.read_csv(output)
    assert len(scores) == scored["rows"] == USERS + 5
    assert np.isfinite(scores["p_active_60d"]).all() and scores["p_active_60d"].between(0, 1).all()
    assert scored["source_validation"]["bad_rows_by_file"]["PAYMENTS.csv"]["by_rule"] == {"not_a_number": 1}

    # the seed data itself, exactly as the reference ships it, is scored by this champion
    seed_scores = tmp_path / "seed-scores.csv"
    seed = _cli("churn", "score", "--data", str(_seed_folder()), "--as-of", AS_OF.isoformat(), "--output",
                str(seed_scores))
    assert seed["exit_code"] == 0, seed
    frame = pd.read_csv(seed_scores)
    assert frame["CUS_CUST_ID_BUY"].tolist() == [1001, 1002, 1003, 1004, 1005]
    assert np.isfinite(frame["p_active_60d"]).all()

    # drift on the champion's own sources: same validation, nothing drifts
    drift = _cli("churn", "drift", "--data", str(original_shape), "--as-of", AS_OF.isoformat())
    assert drift["exit_code"] == 0 and drift["drift_detected"] is False, drift
    assert drift["source_validation"]["bad_rows"] == 5

    # an empty user base is an error, not "rows: 0"
    empty = Path(shutil.copytree(original_shape, tmp_path / "empty"))
    header = (empty / "DEMOGRAFICOS.csv").read_text().split("\n")[0]
    (empty / "DEMOGRAFICOS.csv").write_text(header + "\n")
    refused = _cli("churn", "score", "--data", str(empty), "--as-of", AS_OF.isoformat(), "--output",
                   str(tmp_path / "none.csv"))
    assert refused["exit_code"] == 1 and "DEMOGRAFICOS.csv: file has a header but no rows" in refused["error"]
    assert not (tmp_path / "none.csv").exists()


def test_a_job_failing_in_the_spark_pipeline_surfaces_its_own_error_through_the_cli(kpi_env, original_shape):
    from kpi.churn.spark_submit import LOG_TAIL_CHARS
    from kpi.churn.validate import ensure_valid_sources

    # validation stored a clean copy; the Spark job reads it. Break that copy: Spark's own read fails.
    validated = ensure_valid_sources(str(original_shape), kpi_env)
    clean = Path(validated.clean_file("payments").removeprefix("file://"))
    clean.write_bytes(b"this is not parquet")
    result = _cli("churn", "train", "--data", str(original_shape), "--as-of", AS_OF.isoformat(), "--trials", "1")
    assert result["exit_code"] == 1 and result["ok"] is False
    error = result["error"]
    first = error.split("\n", 1)[0]
    # the job's own exception type and message come first...
    assert not first.startswith("spark-submit exited"), error
    assert "PAYMENTS.parquet" in first and "Parquet" in error, error
    assert first.split(":", 1)[0].endswith(("Exception", "Error")), first
    # ...then a shortened Spark log tail, without INFO chatter
    assert "-- training job failed (spark-submit exit 1); last Spark log lines:" in error
    tail = error.split("last Spark log lines:\n", 1)[1]
    assert len(tail) <= LOG_TAIL_CHARS and " INFO " not in tail
