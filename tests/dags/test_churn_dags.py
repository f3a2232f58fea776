"""The churn DAGs: integrity on parse, the kubernetes Spark step, and real dag.test() runs.

Uses the ``airflow_home`` fixture of ``tests/dags/conftest.py`` (a migrated Airflow home activated for this
process). The dag.test() runs use real storage, a real MLflow store, real Spark (spark-submit, local
master) and Airflow's own asset events.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import pytest

CHURN_DAGS = ("churn_data_watchdog", "churn_training", "churn_drift_monitor")
DAGS_FOLDER = Path(__file__).resolve().parents[2] / "pipelines" / "kpi" / "dags"
AS_OF = dt.date(2024, 6, 30)


def _bag(path: Path = DAGS_FOLDER):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path), include_examples=False)
    assert not bag.import_errors, bag.import_errors
    return bag


# --- parse only -----------------------------------------------------------------------------------------
def test_churn_dags_parse_with_tags_owner_retries_and_their_schedules(airflow_home):
    bag = _bag()
    for dag_id in CHURN_DAGS:
        dag = bag.get_dag(dag_id)
        assert dag is not None, f"{dag_id} missing"
        assert dag.tags and "churn" in dag.tags
        assert not dag.catchup
        for task in dag.tasks:
            assert task.owner == "kpi-churn"
            assert task.retries is not None
    training = bag.get_dag("churn_training")
    # scheduled on either asset
    condition = training.timetable.asset_condition
    assert type(condition).__name__ == "AssetAny"
    assert {a.name for a in condition.objects} == {"churn_sources", "churn_drift"}
    assert [t.task_id for t in training.topological_sort()] == [
        "resolve_inputs", "validate_sources", "train", "evaluate_and_promote"]
    assert bag.get_dag("churn_drift_monitor").schedule == "@weekly"
    assert bag.get_dag("churn_data_watchdog").schedule == "*/15 * * * *"
    watchdog_task = bag.get_dag("churn_data_watchdog").get_task("detect_source_changes")
    assert [o.name for o in watchdog_task.outlets] == ["churn_sources_changes"]  # an alias: emits only on change


def test_parsing_the_churn_dags_imports_nothing_heavy(airflow_home):
    import subprocess

    code = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"b = DagBag(dag_folder={str(DAGS_FOLDER)!r}, include_examples=False)\n"
        "assert not b.import_errors, b.import_errors\n"
        "print(sorted(m for m in ('pandas', 'pyspark', 'mlflow', 'evidently', 'sklearn', 'shap', "
        "'great_expectations') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_kubernetes_backend_submits_the_packaged_spark_application(airflow_home, monkeypatch):
    import jsonschema
    import yaml
    from kpi.settings import reload_settings

    from tests.conftest import reference_file

    monkeypatch.setenv("KPI_SPARK_BACKEND", "kubernetes")
    monkeypatch.setenv("KPI_SPARK_NAMESPACE", "kpi-jobs")
    monkeypatch.setenv("KPI_SPARK_IMAGE", "registry.example/kpi-spark:9.9")
    settings = reload_settings()
    try:
        dag = _bag(DAGS_FOLDER / "churn_training.py").get_dag("churn_training")
    finally:
        monkeypatch.undo()
        reload_settings()
    from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator

    train = dag.get_task("train")
    assert isinstance(train, SparkKubernetesOperator)
    assert train.namespace == "kpi-jobs" and train.kubernetes_conn_id == settings.spark_kubernetes_conn_id
    assert train.retries == 0
    assert [t.task_id for t in dag.topological_sort()] == [
        "resolve_inputs", "validate_sources", "train", "collect_training_result", "evaluate_and_promote"]
    app = train.template_spec["spark"]
    assert app["spec"]["image"] == "registry.example/kpi-spark:9.9"
    assert app["spec"]["mainApplicationFile"] == settings.spark_main_application_file
    # run inputs are Airflow templates resolved at run time from the validated inputs
    assert "xcom_pull(task_ids='validate_sources')" in app["spec"]["arguments"][1]
    crd = yaml.safe_load(reference_file("schemas", "sparkoperator.k8s.io_sparkapplications.yaml").read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta2")["schema"]["openAPIV3Schema"]
    jsonschema.validate(app, schema, cls=jsonschema.Draft7Validator)


# --- dag.test() runs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def churn_sources(tmp_path_factory):
    """A tiny simulated dataset (baseline) and a shifted one, as of AS_OF."""
    from kpi.churn.simulate import simulate_sources

    base = tmp_path_factory.mktemp("dag-sources")
    shifted = tmp_path_factory.mktemp("dag-sources-shifted")
    simulate_sources(str(base), 1500, AS_OF, seed=11)
    simulate_sources(str(shifted), 1500, AS_OF, seed=12, scenario="shifted")
    return {"base": base, "shifted": shifted}


@pytest.fixture()
def dag_env(kpi_env, airflow_home, monkeypatch, tmp_path):
    """kpi_env plus the watched location and a small, fast training configuration."""
    from kpi.settings import reload_settings

    watched = tmp_path / "watched"
    monkeypatch.setenv("KPI_CHURN_DATA_URL", watched.as_uri())
    monkeypatch.setenv("KPI_CHURN_SEARCH_TRIALS", "2")
    monkeypatch.setenv("KPI_SPARK_MASTER", "local[1]")
    monkeypatch.setenv("KPI_SPARK_BACKEND", "local")
    yield reload_settings()
    reload_settings()


def _events(asset_name: str) -> list[dict]:
    import sqlalchemy as sa
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.settings import Session

    with Session() as session:
        rows = session.execute(
            sa.select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == asset_name).order_by(AssetEvent.id)).all()
    return [dict(r[0] or {}) for r in rows]


def _run(dag_id: str, conf: dict | None = None) -> dict:
    from kpi.airflow_local import run_dag_once

    return run_dag_once(dag_id, conf=conf or {})


@pytest.mark.slow
def test_watchdog_dag_emits_churn_sources_only_when_a_file_changed(dag_env, churn_sources):
    watched = Path(dag_env.churn_data_url.removeprefix("file://"))
    shutil.copytree(churn_sources["base"], watched)
    before = len(_events("churn_sources"))

    first = _run("churn_data_watchdog", {"as_of": AS_OF.isoformat()})
    assert first["state"] == "success", first
    events = _events("churn_sources")
    assert len(events) == before + 1
    assert events[-1]["as_of"] == AS_OF.isoformat() and events[-1]["data_url"] == dag_env.churn_data_url
    assert len(events[-1]["changed_files"]) == 5

    second = _run("churn_data_watchdog", {"as_of": AS_OF.isoformat()})
    assert second["state"] == "success"
    assert len(_events("churn_sources")) == before + 1  # nothing changed: no event

    shutil.copy(churn_sources["shifted"] / "PAYMENTS.csv", watched / "PAYMENTS.csv")
    third = _run("churn_data_watchdog", {"as_of": AS_OF.isoformat()})
    assert third["state"] == "success"
    events = _events("churn_sources")
    assert len(events) == before + 2 and events[-1]["changed_files"] == ["PAYMENTS.csv"]


@pytest.mark.slow
def test_training_then_drift_monitor_dags_on_the_local_backend(dag_env, churn_sources):
    from kpi import storage
    from kpi.churn.registry import load_champion

    promotions = len(_events("churn_champion"))
    trained = _run("churn_training", {"data_url": str(churn_sources["base"]), "as_of": AS_OF.isoformat(),
                                      "trials": 2})
    assert trained["state"] == "success", trained
    assert set(trained["tasks"].values()) == {"success"}
    decision = trained["xcom"]["evaluate_and_promote"]
    assert decision["decision"] == "promoted"  # the first model becomes champion
    # ...which churn_champion announces to churn_scoring, with the model and the training's inputs
    events = _events("churn_champion")
    assert len(events) == promotions + 1
    assert events[-1]["model_version"] == int(decision["training"]["model_version"])
    assert events[-1]["as_of"] == AS_OF.isoformat() and events[-1]["data_url"] == str(churn_sources["base"])
    champion = load_champion(dag_env)
    assert champion is not None and str(champion.version) == str(decision["training"]["model_version"])

    drift_before = len(_events("churn_drift"))
    calm = _run("churn_drift_monitor", {"data_url": str(churn_sources["base"]), "as_of": AS_OF.isoformat()})
    assert calm["state"] == "success" and calm["xcom"]["measure_drift"]["drift_detected"] is False
    assert len(_events("churn_drift")) == drift_before

    later = (AS_OF + dt.timedelta(days=7)).isoformat()
    shifted = _run("churn_drift_monitor", {"data_url": str(churn_sources["shifted"]), "as_of": later})
    assert shifted["state"] == "success"
    result = shifted["xcom"]["measure_drift"]
    assert result["drift_detected"] is True
    events = _events("churn_drift")
    assert len(events) == drift_before + 1 and events[-1]["as_of"] == later
    report = json.loads(storage.read_bytes(result["json_url"], dag_env))
    assert report["drift_share"] == result["drift_share"] >= dag_env.churn_drift_threshold

