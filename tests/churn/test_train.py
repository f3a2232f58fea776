"""Training end to end: job.py under spark-submit on simulated sources, what it logs, and batch scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from model_support import TRIALS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_job_prints_and_writes_the_result_document(trained, churn_data):
    from kpi import storage
    from kpi.churn.sources import data_version

    result = trained.result
    assert result["ok"] is True
    assert result["data_version"] == data_version(churn_data.url)
    assert result["model_version"] == 1
    url = storage.join(
        trained.settings.resolved_storage_url,
        "training-runs",
        churn_data.as_of.isoformat(),
        f"{result['data_version']}.json",
    )
    written = json.loads(storage.read_bytes(url, trained.settings))
    for key in ("run_id", "model_version", "auc", "data_version"):
        assert written[key] == result[key]


def test_model_beats_chance_clearly_and_matches_spark(trained, churn_data):
    result = trained.result
    assert result["parity_max_abs_diff"] < 1e-6
    # the simulator's signal is strong (oracle AUC in the summary); a linear model gets most of it
    assert 0.7 < result["auc"] <= churn_data.summary["oracle_auc"] + 0.02
    assert 0 < result["holdout"]["ece"] < 0.1


def test_every_trial_is_a_nested_run_with_metrics_dataset_and_data_version(trained):
    from kpi.churn.mlflow_utils import client

    mlflow_client = client(trained.settings)
    parent = mlflow_client.get_run(trained.result["run_id"])
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == TRIALS
    for child in children:
        assert {"val_roc_auc", "val_pr_auc", "val_log_loss", "val_brier", "val_ece"} <= set(
            child.data.metrics
        )
        family = child.data.params["model_family"]
        expected = {"reg_param", "elastic_net"} if family == "logistic_regression" else {
            "max_depth", "max_iter", "step_size"}
        assert expected <= set(child.data.params)
        assert child.data.tags["model_family"] == family
        assert child.data.tags["data_version"] == trained.result["data_version"]
        assert [d.dataset.digest for d in child.inputs.dataset_inputs] == [
            trained.result["data_version"][:32]
        ]
    assert parent.data.tags["data_version"] == trained.result["data_version"]
    assert parent.inputs.dataset_inputs, "the parent run logs the training dataset"
    assert parent.data.metrics["holdout_roc_auc"] == pytest.approx(trained.result["auc"])
    assert parent.data.params["model_families"] == "logistic_regression,gbt"
    assert parent.data.tags["model_family"] == trained.result["model_family"]
    assert trained.result["model_family"] == max(
        children, key=lambda c: c.data.metrics["val_roc_auc"]).data.params["model_family"]


def test_run_carries_holdout_reference_features_and_a_registered_pyfunc(trained, tmp_path):
    import mlflow
    from kpi.churn.features import FEATURE_COLUMNS
    from kpi.churn.mlflow_utils import client, download_run_artifact, using_store

    run_id = trained.result["run_id"]
    reference = pd.read_parquet(
        download_run_artifact(trained.settings, run_id, "reference/features.parquet", tmp_path)
    )
    assert list(reference.columns) == FEATURE_COLUMNS and len(reference) > 1000
    holdout = pd.read_parquet(
        download_run_artifact(trained.settings, run_id, "holdout/holdout.parquet", tmp_path)
    )
    assert len(holdout) == trained.result["rows"]["holdout"] and set(holdout["label"]) == {0.0, 1.0}
    # every feature column of the training set: a champion with other features scores the same users
    assert set(FEATURE_COLUMNS) <= set(holdout.columns)

    version = client(trained.settings).get_model_version("churn-model", "1")
    assert version.run_id == run_id
    assert version.tags["data_version"] == trained.result["data_version"]
    assert version.tags["model_family"] == trained.result["model_family"]
    with using_store(trained.settings):
        pyfunc = mlflow.pyfunc.load_model("models:/churn-model/1")
    signature = pyfunc.metadata.get_input_schema()
    assert signature.input_names() == FEATURE_COLUMNS
    predicted = pyfunc.predict(holdout[FEATURE_COLUMNS].head(50))
    assert list(predicted.columns) == ["p_active_60d"]
    assert predicted["p_active_60d"].between(0, 1).all()


def test_score_writes_every_user_with_the_champion(trained, churn_data, spark, tmp_path):
    from kpi.churn.registry import evaluate_and_promote
    from kpi.churn.score import score_users

    evaluate_and_promote(trained.settings, 1)  # idempotent: first model -> champion, then already champion
    out = tmp_path / "scores" / "scores.csv"
    summary = score_users(trained.settings, churn_data.url, churn_data.as_of, str(out), spark=spark)
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["CUS_CUST_ID_BUY", "p_active_60d"]
    assert len(scores) == summary["rows"] == churn_data.users
    assert scores["CUS_CUST_ID_BUY"].is_unique
    assert scores["p_active_60d"].between(0, 1).all()
    # scored at as_of, recent payers (label=1 in the simulator's outcome) should rank higher on average
    outcomes = pd.read_csv(Path(churn_data.url) / "OUTCOMES.csv")
    merged = scores.merge(outcomes, on="CUS_CUST_ID_BUY")
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(merged["active_next_60d"], merged["p_active_60d"]) > 0.7
    assert np.isclose(summary["mean_p_active_60d"], scores["p_active_60d"].mean())


def test_score_without_a_champion_says_so(tmp_path, churn_data):
    from kpi.churn.score import NoChampionError, score_users
    from model_support import store_settings

    with pytest.raises(NoChampionError, match="kpi churn train"):
        score_users(store_settings(tmp_path), churn_data.url, churn_data.as_of, str(tmp_path / "x.csv"))


@pytest.mark.parametrize("family", ["gbt", "logistic_regression"])
def test_each_family_trains_exports_with_parity_and_registers(family, churn_data, spark, tmp_path):
    """In-process training restricted to one family on the real feature set (the search picks only it)."""
    from kpi.churn.mlflow_utils import client, load_version_model
    from kpi.churn.train import train_model
    from model_support import store_settings

    settings = store_settings(tmp_path).model_copy(update={"churn_model_families": [family]})
    result = train_model(settings, churn_data.url, churn_data.as_of, trials=1, spark=spark)
    assert result["model_family"] == family and result["trial_families"] == [family]
    assert result["parity_max_abs_diff"] < 1e-6
    assert result["auc"] > 0.7
    model = load_version_model(settings, result["model_version"])
    assert model.family == family
    assert (model.trees is not None) == (family == "gbt")
    tags = client(settings).get_model_version(settings.churn_model_name, str(result["model_version"])).tags
    assert tags["model_family"] == family
    # the registered model is the winning trial's own fit (train rows only), not a refit on train + validation:
    # on the validation users it scores exactly the AUC its trial was chosen by
    from kpi.churn import features
    from kpi.churn.metrics import classification_metrics
    from kpi.churn.train import ID, LABEL, split_frames

    training_set = features.training_set_spark(spark, churn_data.url, churn_data.as_of, settings)
    validation = split_frames(training_set, ID, settings.churn_seed)[1].toPandas()
    val_auc = classification_metrics(validation[LABEL].to_numpy(), model.predict_proba(validation))["roc_auc"]
    assert val_auc == pytest.approx(result["best_val_auc"], abs=1e-9)


def test_the_search_stops_starting_trials_after_its_time_budget(churn_data, spark, tmp_path):
    from kpi.churn.train import train_model
    from model_support import store_settings

    settings = store_settings(tmp_path).model_copy(
        update={"churn_model_families": ["logistic_regression"], "churn_search_seconds": 1})
    result = train_model(settings, churn_data.url, churn_data.as_of, trials=5, spark=spark)
    assert result["trials"] == 5 and result["trials_run"] == 1  # one Spark fit takes longer than 1 s
    assert result["parity_max_abs_diff"] < 1e-6


def test_no_trial_starts_that_would_end_past_the_budget():
    from kpi.churn.train import budget_allows_another_trial

    assert budget_allows_another_trial(0.0, [], 150)  # the first trial always starts
    assert budget_allows_another_trial(60.0, [30.0, 60.0], 150)  # 60 + 60 <= 150
    # 100 s in, the longest trial took 60 s: the next would end at 160 s, past the budget
    assert not budget_allows_another_trial(100.0, [30.0, 60.0], 150)
    assert budget_allows_another_trial(1000.0, [60.0], 0)  # 0: no budget
