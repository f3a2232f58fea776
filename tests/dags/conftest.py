"""Airflow for DAG tests: one self-contained Airflow home per test session.

The fixture itself lives in tests/conftest.py (every area that imports airflow requests it first).

Fixture ``airflow_home`` (session): takes the session's ``AIRFLOW_HOME`` (a temporary folder that
tests/conftest.py sets before any test imports airflow) with a sqlite metadata DB, migrates it once (``airflow db migrate`` in a subprocess), points the DAGs folder at
``pipelines/kpi/dags`` with examples off, and exports the settings into this process so that
``DagBag`` and ``dag.test()`` work. Airflow reads its configuration on first import, so test modules
must import ``airflow`` (and DAG modules) inside tests that request ``airflow_home``, never at module
level. Yields the environment dict (``AIRFLOW_HOME``, ``AIRFLOW__CORE__DAGS_FOLDER``, ...).

Helpers for tests, from ``kpi.airflow_local`` (nothing crypto-specific in them):
``load_dag(dag_id)`` parses the DAGs folder and raises on import errors, and
``run_dag_once(dag_id, logical_date)`` runs one DAG run in-process with ``dag.test()`` and returns
``{"run_id", "state", "tasks": {task_id: state}}``. Combine with ``kpi_env`` (tests/conftest.py) for
the session Postgres: the tasks read ``KPI_*`` settings from the environment.

Usage (e.g. tests/dags/test_churn_dags.py)::

    def test_my_dag_runs(airflow_home, kpi_env):
        from kpi.airflow_local import run_dag_once
        assert run_dag_once("my_dag", datetime.date(2026, 1, 1))["state"].endswith("success")
"""

from __future__ import annotations

from pathlib import Path


DAGS_FOLDER = Path(__file__).resolve().parents[2] / "pipelines" / "kpi" / "dags"
