"""The local platform's processes come out of the rendered chart, not out of a second configuration: command
lines, environments and mounted files are the render's, changed only by the documented bridges (loopback
addresses, local paths) and the permitted differences (executor, Spark backend, listening ports)."""

from __future__ import annotations

import re

import pytest
from kpi.platform.chart import RELEASE, named

# environment variables the local platform adds or changes, and nothing else
PERMITTED = {"AIRFLOW__CORE__EXECUTOR", "KPI_SPARK_BACKEND", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
             "AIRFLOW__API__HOST", "AIRFLOW__API__PORT", "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"}
CLUSTER_ADDRESS = re.compile(rf"\b{RELEASE}-[a-z0-9-]+(\.{RELEASE}[.a-z]*)?:\d+")


@pytest.fixture(scope="module")
def processes(local_render):
    from kpi.platform.local import plan

    return {p.name: p for p in plan(local_render)}


def _container(render, kind: str, name: str, container: str) -> dict:
    spec = named(render.docs, kind, name)["spec"]["template"]["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == container)


def test_every_program_of_the_chart_runs_except_what_needs_a_cluster(processes):
    daemons = {name for name, p in processes.items() if p.kind == "daemon"}
    assert daemons == {f"{RELEASE}-mlflow/mlflow", f"{RELEASE}-api-server/api-server", f"{RELEASE}-scheduler/scheduler",
                       f"{RELEASE}-dag-processor/dag-processor", f"{RELEASE}-triggerer/triggerer",
                       f"{RELEASE}-dashboard/dashboard", f"{RELEASE}-jupyterlab/jupyterlab",
                       f"{RELEASE}-scoring/scoring"}
    jobs = [name for name, p in processes.items() if p.kind == "job"]
    # the chart's migrations and bootstrap Jobs run first, then each pod's init containers before its server
    assert jobs[:2] == [f"{RELEASE}-run-airflow-migrations/run-airflow-migrations", f"{RELEASE}-db-bootstrap-1/db-init"]
    assert f"{RELEASE}-api-server/auth-passwords" in jobs


def test_command_lines_are_the_charts_with_addresses_and_paths_bridged(local_render, processes):
    from kpi.platform.local import image_command

    mlflow = _container(local_render, "Deployment", f"{RELEASE}-mlflow", "mlflow")
    argv = processes[f"{RELEASE}-mlflow/mlflow"].argv
    assert argv[0] == image_command(mlflow["image"])[0][0] == "mlflow"
    assert len(argv) == 1 + len(mlflow["args"])
    for ours, chart in zip(argv[1:], mlflow["args"]):
        assert ours == chart or local_render.rewrite(chart) == ours or "127.0.0.1" in ours or ours.isdigit() \
            or ours.startswith("postgresql://mlflow:"), (ours, chart)
    assert argv[argv.index("--port") + 1] == str(local_render.ports["mlflow"])
    for server in ("scheduler", "dag-processor", "triggerer", "api-server"):
        chart = _container(local_render, "Deployment", f"{RELEASE}-{server}", server)
        assert processes[f"{RELEASE}-{server}/{server}"].argv == chart["args"]  # bash -c "exec airflow ..."
    dashboard = _container(local_render, "Deployment", f"{RELEASE}-dashboard", "dashboard")
    entrypoint, _ = image_command(dashboard["image"])
    ours = processes[f"{RELEASE}-dashboard/dashboard"].argv
    assert ours[:2] == entrypoint[:2] and ours[2].endswith("/dashboard/app.py")
    assert ours[3:] == ["--server.address=127.0.0.1", f"--server.port={local_render.ports['dashboard']}",
                        *dashboard["args"][2:]]  # the upload cap as the chart sets it
    scoring = _container(local_render, "Deployment", f"{RELEASE}-scoring", "scoring")
    assert scoring["command"][:3] == ["kpi", "churn", "serve"]  # the chart's command, listening here
    assert processes[f"{RELEASE}-scoring/scoring"].argv == [
        "kpi", "churn", "serve", "--host", "127.0.0.1", "--port", str(local_render.ports["scoring"])]


def test_environments_are_the_charts_plus_only_the_permitted_differences(local_render, processes):
    from kpi.platform.local import _mounts, container_env, image_env

    for name, process in processes.items():
        pod, container_name = name.split("/")
        kind = "Job" if "run-airflow-migrations" in pod or "db-bootstrap" in pod else "Deployment"
        spec = named(local_render.docs, kind, pod)["spec"]["template"]["spec"]
        container = _container(local_render, kind, pod, container_name)
        paths, _, _ = _mounts(local_render, spec, container, pod)
        chart = {**{k: local_render.rewrite(v, paths) for k, v in image_env(container["image"]).items()},
                 **container_env(local_render, container, paths)}
        machine = set(__import__("os").environ) | {"PATH", "SPARK_LOCAL_IP", "PYSPARK_PYTHON", "PYTHONUNBUFFERED"}
        added = {k for k in process.env if k not in chart} - machine
        assert added <= PERMITTED, (name, added - PERMITTED)
        changed = {k for k in chart if process.env.get(k) != chart[k]}
        assert changed <= PERMITTED, (name, changed)
        if "AIRFLOW_HOME" in chart:
            assert process.env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert process.env["KPI_SPARK_BACKEND"] == "local"
        for key, value in process.env.items():
            assert not CLUSTER_ADDRESS.search(value), (name, key, value)


def test_airflow_cfg_is_the_releases_with_loopback_addresses_and_local_paths(local_render, processes):
    config = local_render.config_map(f"{RELEASE}-config")["airflow.cfg"]
    written = next(content for p in processes.values() for path, (content, _) in p.files.items()
                   if path.name == "airflow.cfg")
    assert written == local_render.rewrite(config)
    assert f"execution_api_server_url = http://127.0.0.1:{local_render.ports['api-server']}/execution/" in written
    assert "simple_auth_manager_users = admin:admin" in written and "remote_logging = True" in written
    assert "/opt/airflow" not in written and not CLUSTER_ADDRESS.search(written)


def test_rewrite_maps_every_form_of_a_service_address(local_render):
    port = local_render.ports["mlflow"]
    for host in (f"{RELEASE}-mlflow", f"{RELEASE}-mlflow.{RELEASE}", f"{RELEASE}-mlflow.{RELEASE}.svc",
                 f"{RELEASE}-mlflow.{RELEASE}.svc.cluster.local"):
        assert local_render.rewrite(f"http://{host}:5000/x") == f"http://127.0.0.1:{port}/x"
    # a port the Service does not have, and a host that is no Service, are left alone
    assert local_render.rewrite(f"http://{RELEASE}-mlflow:5001") == f"http://{RELEASE}-mlflow:5001"
    assert local_render.rewrite("http://example.com:5000") == "http://example.com:5000"
    console = local_render.service_ports()[(f"{RELEASE}-minio", 9001)]
    assert console == local_render.ports["minio"] + 1


def test_jupyterlab_kernels_draw_inline_whatever_backend_the_caller_exported(local_render, monkeypatch):
    """Importing streamlit exports MPLBACKEND=Agg into its process; a JupyterLab started from such a process
    (a test run that imported the dashboard first, for one) used to give kernels that drew no figures."""
    from kpi.platform.local import plan

    monkeypatch.setenv("MPLBACKEND", "Agg")
    env = next(p for p in plan(local_render) if p.name == f"{RELEASE}-jupyterlab/jupyterlab").env
    assert env["MPLBACKEND"] == "module://matplotlib_inline.backend_inline"
