"""Airflow on one machine for the demo and the tests: a home folder, a migrated metadata DB, ``dag.test()``.

Airflow reads its configuration when it is first imported, so :func:`activate_airflow_home` must run
before anything imports ``airflow`` in the process. Nothing here is crypto-specific: the churn DAGs
run the same way.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"


def airflow_environment(home: Path, dags_folder: Path | None = None, sql_alchemy_conn: str | None = None) -> dict:
    """Environment variables of a self-contained Airflow under ``home`` (sqlite metadata DB by default)."""
    home = Path(home).resolve()
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder or DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn or f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # dag.test() logs every task line to stdout: keep warnings and errors only
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
    }


def prepare_airflow_home(home: Path, dags_folder: Path | None = None, sql_alchemy_conn: str | None = None) -> dict:
    """Create ``home`` and migrate its metadata DB once (a marker file skips later calls); return the env.

    The migration runs in a subprocess so that this process can still choose its own configuration.
    """
    env = airflow_environment(home, dags_folder, sql_alchemy_conn)
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    marker = home / ".migrated"
    if not marker.exists() or marker.read_text() != env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]:
        res = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env={**os.environ, **env},
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed in {home}: {res.stderr[-2000:] or res.stdout[-2000:]}")
        marker.write_text(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    return env


def activate_airflow_home(env: dict) -> None:
    """Point this process at the prepared Airflow home; refuses when Airflow already loaded another one."""
    loaded = sys.modules.get("airflow.configuration")
    if loaded is not None and os.environ.get("AIRFLOW_HOME") != env["AIRFLOW_HOME"]:
        raise RuntimeError("airflow was imported with another AIRFLOW_HOME before activate_airflow_home()")
    os.environ.update(env)


def load_dag(dag_id: str, dags_folder: Path | None = None):
    """The DAG ``dag_id`` parsed from the DAGs folder (import errors are raised, not swallowed)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder or DAGS_FOLDER), include_examples=False)
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise LookupError(f"no DAG {dag_id!r} in {dags_folder or DAGS_FOLDER}")
    return dag


_WARM_API = None


def _use_one_warm_execution_api(timeout: float = 60.0) -> None:
    """Make dag.test() use one in-process execution API whose startup has finished.

    Airflow 3.2 builds a new in-process API per task and starts its lifespan without waiting for it;
    on a busy machine the task's first request can arrive first and fail (``svcs_registry`` missing).
    """
    global _WARM_API
    import time

    from airflow.sdk.execution_time import supervisor

    if _WARM_API is None:
        from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI

        api = InProcessExecutionAPI()
        api.transport  # noqa: B018 - starts the lifespan on a2wsgi's loop
        deadline = time.monotonic() + timeout
        while getattr(api.app.state, "svcs_registry", None) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("Airflow's in-process execution API did not start")
            time.sleep(0.05)
        _WARM_API = api
    supervisor.in_process_api_server = lambda: _WARM_API


def run_dag_once(dag_id: str, logical_date: dt.date, dags_folder: Path | None = None) -> dict:
    """Run one DAG run in-process with ``dag.test()`` for ``logical_date``; return its state and task states."""
    dag = load_dag(dag_id, dags_folder)
    _use_one_warm_execution_api()
    when = dt.datetime.combine(logical_date, dt.time(), tzinfo=dt.timezone.utc)
    run = dag.test(logical_date=when, run_after=when)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()} if hasattr(run, "get_task_instances") \
        else {}
    return {"dag_id": dag_id, "run_id": run.run_id, "state": str(run.state), "tasks": states}


