"""Every DAG file parses without import errors, without external systems, and declares owner, retries and tags."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.dags.conftest import DAGS_FOLDER


@pytest.fixture(scope="module")
def dag_bag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER), include_examples=False)


def test_no_import_errors(dag_bag):
    assert dag_bag.import_errors == {}
    assert "crypto_events" in dag_bag.dag_ids


def test_every_dag_has_tags_an_owner_and_retries(dag_bag):
    assert dag_bag.dags
    for dag_id, dag in dag_bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        # retries are a DAG-wide default (a task may opt out on purpose, e.g. an expensive training step)
        assert (dag.default_args or {}).get("retries", 0) >= 1, f"{dag_id} has no default retries"
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"


def test_crypto_events_is_daily_catchup_capable_and_runs_one_at_a_time(dag_bag):
    dag = dag_bag.get_dag("crypto_events")
    assert dag.catchup is True and dag.max_active_runs == 1
    upstream = {t.task_id: t.upstream_task_ids for t in dag.tasks}
    assert upstream == {"ingest_landing": set(), "landing_check": {"ingest_landing"}, "stage": {"ingest_landing"},
                        "validate": {"stage"}, "quarantine": {"stage"}, "publish": {"validate", "quarantine"},
                        "report": {"publish"}}


def test_parsing_needs_no_external_system_and_no_heavy_import(airflow_home):
    # a fresh interpreter with a database URL that cannot work: parsing must not notice
    code = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS_FOLDER)!r}, include_examples=False)\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "heavy = [m for m in ('great_expectations', 'pyspark', 'mlflow', 'psycopg', 'pandas') if m in sys.modules]\n"
        "print('HEAVY', heavy, len(bag.dags))\n"
    )
    env = {**os.environ, "KPI_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("HEAVY")][-1]
    assert "great_expectations" not in line and "pyspark" not in line and "mlflow" not in line, line


def test_crypto_events_starts_on_the_configured_day(airflow_home, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("KPI_CRYPTO_START_DATE", "2026-11-01")
    bag = DagBag(dag_folder=str(DAGS_FOLDER / "crypto_events.py"), include_examples=False)
    assert bag.import_errors == {}
    # the first data interval is 2026-11-01's: its run fires at 00:00 of the next day (tests/dags/test_crypto_dag.py)
    assert bag.get_dag("crypto_events").start_date.isoformat() == "2026-11-01T00:00:00+00:00"
    monkeypatch.setenv("KPI_CRYPTO_START_DATE", "2026-13-01")
    bad = DagBag(dag_folder=str(DAGS_FOLDER / "crypto_events.py"), include_examples=False)
    assert any("crypto_start_date" in err for err in bad.import_errors.values()), bad.import_errors
