"""Airflow on one machine for the demo and the tests: a home folder, a migrated metadata DB, ``dag.test()``.

Airflow reads its configuration when it is first imported, so :func:`activate_airflow_home` must run
before anything imports ``airflow`` in the process. Nothing here is crypto-specific: the churn DAGs
run the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

DAGS_FOLDER = Path(__file__).resolve().parent / "dags"


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


# The Airflow releases whose dag.test() internals use_one_warm_execution_api() was written against; pyproject.toml
# pins apache-airflow to this range and tests/dags/test_execution_api.py fails loudly when the internals move.
PATCHED_AIRFLOW = ">=3.2.2,<3.3"


def ensure_jwt_secret() -> None:
    """Give this process an ``[api_auth] jwt_secret`` when none is configured (configuration, no patching).

    The in-process execution API builds a JWT validator on startup that refuses to generate a missing
    secret and raises on a thread nobody watches: every task request then fails. As Airflow does for its
    own components, use a random secret for this process; the environment variable too, since it outranks
    ``conf.set`` and child processes inherit it.
    """
    from airflow.configuration import conf

    if not conf.get("api_auth", "jwt_secret", fallback=""):
        import secrets

        secret = secrets.token_urlsafe(32)
        os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secret
        conf.set("api_auth", "jwt_secret", secret)


_WARM_API = None


def use_one_warm_execution_api(timeout: float = 60.0) -> None:
    """Make dag.test() use one in-process execution API that stays alive and has finished starting.

    Why a patch (no supported API exists in Airflow 3.2): ``InProcessTestSupervisor._api_client`` builds an
    ``InProcessExecutionAPI`` per task and keeps only its transport. The API object owns the exit stack of
    the app's lifespan; when it is garbage-collected, the lifespan is closed and svcs removes
    ``app.state.svcs_registry``, so the task's first request fails (``'State' object has no attribute
    'svcs_registry'``). Replacing ``supervisor.in_process_api_server`` (the factory it calls) with one kept,
    started API avoids that. The internals it relies on are checked first and by
    tests/dags/test_execution_api.py, and apache-airflow is pinned to :data:`PATCHED_AIRFLOW`.

    Raises:
        RuntimeError: Airflow's internals are not the ones this was written against.
        TimeoutError: the API did not finish starting within ``timeout`` seconds.
    """
    global _WARM_API

    from airflow.sdk.execution_time import supervisor

    if not callable(getattr(supervisor, "in_process_api_server", None)):
        import airflow

        raise RuntimeError(
            f"Airflow {airflow.__version__} has no airflow.sdk.execution_time.supervisor.in_process_api_server: "
            f"kpi.airflow_local was written for apache-airflow{PATCHED_AIRFLOW}; check whether dag.test() still "
            "needs use_one_warm_execution_api() (see its docstring) before widening the pin")
    ensure_jwt_secret()
    if _WARM_API is None:
        from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI

        api = InProcessExecutionAPI()
        api.transport  # noqa: B018 - starts the lifespan on a2wsgi's loop
        deadline = time.monotonic() + timeout
        while getattr(api.app.state, "svcs_registry", None) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("Airflow's in-process execution API did not start: " + _lifespan_error(api))
            time.sleep(0.05)
        _WARM_API = api
    supervisor.in_process_api_server = lambda: _WARM_API


def _lifespan_error(api) -> str:
    """Start the API's lifespan once more on its loop and say how it fails (Airflow drops that error)."""
    import asyncio
    from contextlib import AsyncExitStack

    async def start() -> None:
        await AsyncExitStack().enter_async_context(api.app.router.lifespan_context(api.app))

    try:
        asyncio.run_coroutine_threadsafe(start(), api.transport.app.loop).result(timeout=30)
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        return f"its lifespan raised {type(exc).__name__}: {exc}"
    return "its lifespan starts when retried (a slow machine?)"


def run_dag_once(dag_id: str, logical_date: dt.date | None = None, conf: dict | None = None,
                 dags_folder: Path | None = None) -> dict:
    """Run one DAG run in-process with ``dag.test()`` (Airflow home already active).

    Args:
        dag_id: the DAG to run.
        logical_date: the run's logical date (midnight UTC); None lets Airflow pick "now" (asset-scheduled DAGs).
        conf: the run's ``conf`` (params).
        dags_folder: where to parse the DAG from; default ``pipelines/kpi/dags``.

    Returns:
        ``dag_id``, ``run_id``, ``state``, ``tasks`` (task id -> state), ``xcom`` (task id -> return value)
        and ``seconds``.
    """
    import sqlalchemy as sa
    from airflow.models.xcom import XComModel
    from airflow.settings import Session

    dag = load_dag(dag_id, dags_folder)
    use_one_warm_execution_api()
    kwargs: dict = {"run_conf": conf or {}}
    if logical_date is not None:
        when = dt.datetime.combine(logical_date, dt.time(), tzinfo=dt.timezone.utc)
        kwargs.update(logical_date=when, run_after=when)
    started = time.perf_counter()
    # Airflow 3.2.2's TaskInstance prints its outlet events to stdout (a stray debug print upstream):
    # keep stdout for our tables and the JSON summary line
    with contextlib.redirect_stdout(sys.stderr):
        run = dag.test(**kwargs)
    seconds = round(time.perf_counter() - started, 1)
    tasks = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
    with Session() as session:
        rows = session.scalars(
            sa.select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == run.run_id,
                                       XComModel.key == "return_value")
        ).all()
        xcom = {row.task_id: XComModel.deserialize_value(row) for row in rows}
    return {"dag_id": dag_id, "run_id": run.run_id, "state": str(getattr(run.state, "value", run.state)),
            "tasks": tasks, "xcom": xcom, "seconds": seconds}
