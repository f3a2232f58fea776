"""dag.test() and Airflow's in-process execution API: what kpi.airflow_local patches, and why it still must.

Two upstream problems made dag.test() fail here:
- with no ``[api_auth] jwt_secret`` configured, the API's lifespan raises on a thread nobody watches
  (``ensure_jwt_secret`` configures one: plain configuration);
- Airflow 3.2 builds one ``InProcessExecutionAPI`` per task and keeps only its transport; when the API object
  is garbage-collected its lifespan is closed and ``app.state.svcs_registry`` disappears, so every request of
  the task fails. No supported API lets a caller keep it alive, so ``use_one_warm_execution_api`` replaces
  ``supervisor.in_process_api_server``. apache-airflow is pinned to ``PATCHED_AIRFLOW`` in pyproject.toml and
  the tests below fail loudly when the internals move, or when Airflow fixes the bug (then drop the patch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# two dependent tasks: each talks to the execution API (start, XCom push and pull, finish)
DAG_FILE = '''
import datetime as dt
from airflow.sdk import dag, task


@dag(dag_id="kpi_execution_api_probe", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False,
     tags=["test"])
def probe():
    @task
    def first() -> int:
        return 20

    @task
    def second(value: int) -> int:
        return value + 1

    second(first())


probe()
'''

RUN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from kpi.airflow_local import run_dag_once
    result = run_dag_once("kpi_execution_api_probe", dags_folder=Path(sys.argv[1]))
    print(json.dumps({k: result[k] for k in ("state", "tasks", "xcom")}))
""")

# Airflow's own factory, as dag.test() uses it without our patch: is the API usable once the object is gone?
UNPATCHED = textwrap.dedent("""
    import gc, time
    from airflow.sdk.execution_time import supervisor
    from kpi.airflow_local import ensure_jwt_secret
    ensure_jwt_secret()
    api = supervisor.in_process_api_server()
    transport, app = api.transport, api.app
    deadline = time.monotonic() + 60
    while getattr(app.state, "svcs_registry", None) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    started = getattr(app.state, "svcs_registry", None) is not None
    del api
    gc.collect()
    time.sleep(0.5)
    print("started" if started else "never-started", "kept" if getattr(app.state, "svcs_registry", None) else "lost")
""")


def _python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env}, check=False)


def test_dag_test_runs_a_two_task_dag_in_a_process_without_a_configured_jwt_secret(airflow_home, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "probe.py").write_text(DAG_FILE)
    res = _python(RUN, str(dags), AIRFLOW__API_AUTH__JWT_SECRET="", AIRFLOW__CORE__DAGS_FOLDER=str(dags))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["state"] == "success", res.stderr[-3000:]
    assert result["tasks"] == {"first": "success", "second": "success"}
    assert result["xcom"] == {"first": 20, "second": 21}


def test_the_airflow_internals_the_dag_test_patch_relies_on_are_unchanged(airflow_home):
    """If this fails, Airflow moved what use_one_warm_execution_api() replaces: re-check it before upgrading."""
    import inspect

    import airflow
    from airflow.api_fastapi.execution_api import app as execution_app
    from airflow.sdk.execution_time import supervisor
    from kpi.airflow_local import PATCHED_AIRFLOW
    from packaging.specifiers import SpecifierSet

    assert airflow.__version__ in SpecifierSet(PATCHED_AIRFLOW), (
        f"Airflow {airflow.__version__} is outside {PATCHED_AIRFLOW}, the range kpi.airflow_local was checked against")
    assert callable(getattr(supervisor, "in_process_api_server", None)), "supervisor.in_process_api_server is gone"
    # dag.test() gets its API through the module-level factory we replace (looked up at call time)
    assert "in_process_api_server()" in inspect.getsource(supervisor.InProcessTestSupervisor._api_client)
    assert {"app", "transport"} <= set(dir(execution_app.InProcessExecutionAPI))
    # the attribute the patch waits for is the one the lifespan sets
    assert "app.state.svcs_registry = registry" in inspect.getsource(execution_app)


def test_pyproject_pins_airflow_to_the_range_the_patch_was_checked_against():
    from kpi.airflow_local import PATCHED_AIRFLOW

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = [r for deps in extras.values() for r in deps if r.replace(" ", "").startswith("apache-airflow>")]
    assert pins == [f"apache-airflow{PATCHED_AIRFLOW}"]


def test_airflows_own_per_task_api_still_loses_its_registry_when_collected(airflow_home):
    """The upstream bug the patch works around. When this fails, Airflow fixed it: remove
    use_one_warm_execution_api() (run_dag_once then needs only ensure_jwt_secret) and widen the pin."""
    res = _python(UNPATCHED)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-2:] == ["started", "lost"], res.stdout
