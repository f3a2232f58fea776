"""The in-process execution API that dag.test() uses starts even when no JWT secret is configured.

Root cause of the old "in one pytest process with the rest of the suite, dag.test() never gets its
execution API" failures: Airflow's API lifespan raises when [api_auth] jwt_secret is empty, on a thread
where nobody sees it.
"""

from __future__ import annotations

import os
import subprocess
import sys


def _start(env: dict) -> subprocess.CompletedProcess:
    code = ("from kpi.airflow_local import use_one_warm_execution_api\n"
            "use_one_warm_execution_api(timeout=20)\n"
            "print('STARTED')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_the_execution_api_starts_without_a_configured_jwt_secret(airflow_home):
    res = _start({**os.environ, "AIRFLOW__API_AUTH__JWT_SECRET": ""})
    assert res.returncode == 0 and "STARTED" in res.stdout, res.stderr[-3000:]
