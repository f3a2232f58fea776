"""churn_scoring: parsed (daily and on churn_champion), then run with dag.test() on a real champion, real
sources and the test Postgres: a delivery, a rerun that changes nothing, and the rescoring after a promotion."""

from __future__ import annotations

import pytest
from dashboard.conftest import churn_store, dash_db  # noqa: F401 - the session's champion and test database
from serving.conftest import move_alias, own_registry, serving_env  # noqa: F401

from .conftest import DAGS_FOLDER


def test_churn_scoring_runs_daily_and_after_each_promotion(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER), include_examples=False)
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag("churn_scoring")
    timetable = dag.timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.timetable.expression == "0 4 * * *"
    assert timetable.asset_condition.name == "churn_champion"
    assert [t.task_id for t in dag.tasks] == ["deliver_scores"] and "churn" in dag.tags and not dag.catchup
    assert set(dag.params) == {"data_url", "as_of", "rescore_latest"}
    # churn_training's promotion step is the one that announces a new champion (through an alias: only if it moved)
    promote = bag.get_dag("churn_training").get_task("evaluate_and_promote")
    assert [o.name for o in promote.outlets] == ["churn_promotions"]


@pytest.mark.slow
def test_churn_scoring_delivers_reruns_idempotently_and_rescores_after_a_promotion(
        airflow_home, serving_env, churn_store):  # noqa: F811
    from kpi.airflow_local import run_dag_once
    from kpi.churn.sources import ID, SOURCE_FILES
    from kpi.db import connect, database_url, ensure_schema

    url = database_url(serving_env)
    ensure_schema(url, serving_env)
    with connect(url) as conn:
        conn.execute("TRUNCATE prod.churn_scores, dqm.churn_scoring_runs")
    import pandas as pd

    users = pd.read_csv(f"{churn_store['data_url']}/{SOURCE_FILES['demograficos']}", usecols=[ID])[ID].nunique()
    as_of = churn_store["as_of"].isoformat()
    conf = {"data_url": churn_store["data_url"], "as_of": as_of}

    first = run_dag_once("churn_scoring", conf=conf)
    assert first["state"] == "success", first
    delivered = first["xcom"]["deliver_scores"]
    assert (delivered["users"], delivered["inserted"], delivered["trigger"]) == (users, users, "params")
    with connect(url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT user_id) FROM prod.churn_scores "
                            "WHERE as_of = %s", (as_of,)).fetchone() == (users, users)

    again = run_dag_once("churn_scoring", conf=conf)["xcom"]["deliver_scores"]
    assert (again["inserted"], again["updated"], again["deleted"]) == (0, 0, 0)

    second = churn_store["rounds"][1]["training"]["model_version"]
    move_alias(serving_env, second)
    rescored = run_dag_once("churn_scoring", conf={"data_url": churn_store["data_url"], "rescore_latest": True})
    assert rescored["state"] == "success", rescored
    result = rescored["xcom"]["deliver_scores"]
    assert (result["trigger"], result["as_of"], result["model_version"]) == ("promotion", as_of, second)
    assert result["updated"] == users and result["inserted"] == 0
    with connect(url) as conn:
        assert conn.execute("SELECT array_agg(DISTINCT model_version), count(*) FROM prod.churn_scores").fetchone() \
            == ([second], users)
        runs = conn.execute("SELECT trigger FROM dqm.churn_scoring_runs ORDER BY finished_at").fetchall()
    assert [r[0] for r in runs] == ["params", "params", "promotion"]
