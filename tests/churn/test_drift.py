"""Drift: Evidently on real feature tables; reports in storage (file:// and a real S3 server) and MLflow."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from kpi import storage


@pytest.fixture(scope="module")
def feature_frames(churn_data, tmp_path_factory):
    """Training features of the session dataset, and current features of same-distribution and shifted data."""
    from kpi.churn.features import FEATURE_COLUMNS, scoring_set_pandas, training_set_pandas
    from kpi.churn.simulate import simulate_sources

    later = churn_data.as_of + dt.timedelta(days=30)
    same_dir = tmp_path_factory.mktemp("same-distribution")
    shifted_dir = tmp_path_factory.mktemp("shifted")
    simulate_sources(str(same_dir), churn_data.users, later, seed=churn_data.seed + 1)
    simulate_sources(str(shifted_dir), churn_data.users, later, seed=churn_data.seed + 1, scenario="shifted")
    return {
        "reference": training_set_pandas(churn_data.url, churn_data.as_of)[FEATURE_COLUMNS],
        "same": scoring_set_pandas(str(same_dir), later),
        "shifted": scoring_set_pandas(str(shifted_dir), later),
        "shifted_url": str(shifted_dir),
        "same_url": str(same_dir),
        "later": later,
    }


def test_new_users_without_a_change_in_behaviour_are_not_drift(churn_data, feature_frames, tmp_path):
    """Like with like: users who joined and left no trace yet are outside the reference, and outside the
    current side too (the training population's eligibility rule at the monitoring date)."""
    import shutil
    from pathlib import Path

    import pandas as pd
    from kpi.churn.drift import compare_features, current_features
    from kpi.churn.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, scoring_set_pandas
    from kpi.churn.sources import ID
    from kpi.settings import get_settings

    folder = Path(shutil.copytree(feature_frames["same_url"], tmp_path / "grown"))
    users = pd.read_csv(folder / "DEMOGRAFICOS.csv", dtype=str, keep_default_na=False)
    joined = users.sample(frac=0.5, random_state=3).copy()  # the same kind of people, just registered
    joined[ID] = [str(900_000_000 + i) for i in range(len(joined))]
    pd.concat([users, joined]).to_csv(folder / "DEMOGRAFICOS.csv", index=False)

    later = feature_frames["later"]
    current, _ = current_features(get_settings(), str(folder), later, engine="pandas")
    # every earlier user has left a trace by now; none of the newcomers has
    assert set(current[ID]) == set(users[ID].astype(int))

    def compare(frame):
        return compare_features(feature_frames["reference"], frame, threshold=0.3,
                                numerical=NUMERIC_FEATURES, categorical=CATEGORICAL_FEATURES)

    assert not compare(current).drift_detected
    # every user of the base, as the current side used to be: the newcomers alone look like drift
    assert compare(scoring_set_pandas(str(folder), later)).drift_detected


def _compare(frames, name):
    from kpi.churn.drift import compare_features
    from kpi.churn.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES

    return compare_features(frames["reference"], frames[name], threshold=0.3,
                            numerical=NUMERIC_FEATURES, categorical=CATEGORICAL_FEATURES)


def test_fresh_data_from_the_same_process_does_not_drift(feature_frames):
    result = _compare(feature_frames, "same")
    assert not result.drift_detected
    assert result.drift_share < 0.3
    assert result.summary["n_columns"] == len(result.summary["columns"]) > 20


def test_shifted_behaviour_drifts_in_the_features_it_moves(feature_frames):
    result = _compare(feature_frames, "shifted")
    assert result.drift_detected
    assert result.drift_share >= 0.3
    # the shifted scenario inflates amounts and raises promotions: those features must be among the drifted
    assert {"avg_ticket_120d", "discount_share_120d"} <= set(result.summary["drifted_columns"])
    assert result.summary["columns"]["avg_ticket_120d"]["drifted"] is True


def test_frames_without_shared_features_are_refused():
    import pandas as pd
    from kpi.churn.drift import DriftInputError, compare_features

    with pytest.raises(DriftInputError, match="share no feature column"):
        compare_features(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"b": [1.0]}), threshold=0.3)
    with pytest.raises(DriftInputError, match="empty"):
        compare_features(pd.DataFrame({"a": []}), pd.DataFrame({"a": [1.0]}), threshold=0.3)


# --- end to end: a real champion, reports in storage, figures in MLflow --------------------------------------
@pytest.fixture(scope="module")
def champion_store(churn_data, spark, tmp_path_factory):
    """A sqlite MLflow store holding a champion trained (2 trials) on the session dataset."""
    from kpi.churn.registry import evaluate_and_promote
    from kpi.churn.train import train_model
    from kpi.settings import Settings

    home = tmp_path_factory.mktemp("drift-home")
    settings = Settings(env="test", home=home, storage_url=(home / "storage").as_uri(),
                        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    result = train_model(settings, churn_data.url, churn_data.as_of, trials=2, spark=spark)
    decision = evaluate_and_promote(settings, result["model_version"])
    assert decision["champion_version"] is not None
    return settings.mlflow_tracking_uri


@pytest.fixture()
def drift_env(kpi_env, champion_store, monkeypatch):
    from kpi.settings import reload_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    yield reload_settings()


def _monitoring_runs(settings):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri)
    experiment = client.get_experiment_by_name("churn-monitoring")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.mark.slow
def test_run_drift_writes_reports_to_file_storage_and_logs_to_mlflow(drift_env, churn_data, feature_frames):
    from kpi.churn.drift import run_drift

    before = len(_monitoring_runs(drift_env))
    result = run_drift(drift_env, feature_frames["shifted_url"], feature_frames["later"], engine="pandas")
    assert result["drift_detected"] is True and result["drift_share"] >= drift_env.churn_drift_threshold
    day = feature_frames["later"].isoformat()
    assert result["report_url"] == storage.join(drift_env.resolved_storage_url, "drift-reports", f"{day}.html")
    html = storage.read_bytes(result["report_url"], drift_env).decode()
    assert "<html" in html.lower() and len(html) > 10_000
    document = json.loads(storage.read_bytes(result["json_url"], drift_env))
    assert document["drift_detected"] is True and document["drift_share"] == result["drift_share"]
    assert document["champion_version"] == result["champion_version"]
    assert document["evidently"]["metrics"]  # the full Evidently snapshot rides along
    runs = _monitoring_runs(drift_env)
    assert len(runs) == before + 1
    latest = next(r for r in runs if r.info.run_id == result["mlflow_run_id"])
    assert latest.data.metrics["drift_share"] == pytest.approx(result["drift_share"])
    assert latest.data.metrics["drift_detected"] == 1.0
    # artifacts of a local store stay under a KPI home, never in the current directory
    assert "/mlartifacts/churn-monitoring/" in latest.info.artifact_uri


@pytest.mark.slow
def test_drift_reports_land_in_a_real_s3_server(drift_env, s3_server, feature_frames, monkeypatch):
    import boto3
    from kpi.churn.drift import run_drift
    from kpi.settings import reload_settings

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    prefix = f"drift-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("KPI_STORAGE_URL", f"s3://kpi/{prefix}")
    settings = reload_settings()
    # the sources themselves live in S3 too
    src = f"s3://kpi/{prefix}/sources"
    fs, _ = storage.filesystem(src, settings)
    fs.put(feature_frames["shifted_url"].rstrip("/") + "/", src.removeprefix("s3://") + "/", recursive=True)

    result = run_drift(settings, src, feature_frames["later"])
    assert result["engine"] == "pandas" and result["drift_detected"] is True
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id=s3_server.access_key,
                      aws_secret_access_key=s3_server.secret_key, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="kpi", Prefix=f"{prefix}/drift-reports/")["Contents"]}
    day = feature_frames["later"].isoformat()
    assert keys == {f"{prefix}/drift-reports/{day}.html", f"{prefix}/drift-reports/{day}.json"}
    body = json.loads(s3.get_object(Bucket="kpi", Key=f"{prefix}/drift-reports/{day}.json")["Body"].read())
    assert body["drift_detected"] is True and 0.0 < body["drift_share"] <= 1.0


@pytest.mark.slow
def test_cli_drift_on_the_champions_own_sources_finds_no_drift(drift_env, churn_data):
    from kpi.cli import app
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["churn", "drift", "--data", churn_data.url,
                                   "--as-of", churn_data.as_of.isoformat()])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["drift_detected"] is False
    assert summary["drift_share"] < drift_env.churn_drift_threshold
    assert {"report_url", "json_url", "champion_version", "mlflow_run_id"} <= set(summary)


def test_cli_drift_names_a_missing_source_file(kpi_env, tmp_path):
    from kpi.cli import app
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["churn", "drift", "--data", str(tmp_path), "--as-of", "2024-06-30"])
    assert out.exit_code == 1
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and "PAYMENTS.csv: file is missing" in summary["error"]
