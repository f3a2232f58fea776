"""Worker pods and the Spark job as the cluster would create them, from the rendered chart.

Every task of every DAG under pipelines/kpi/dags gets its pod built by Airflow's own PodGenerator from our
pod template (ConfigMap of the umbrella); the churn SparkApplication is rendered by kpi.churn.spark_submit
with the settings the chart gives the worker pods, then checked against the operator's CRD schema.
"""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from tests.conftest import reference_file

from .platform import KUBE_VERSION, RELEASE, ROOT

DAGS_DIR = ROOT / "pipelines" / "kpi" / "dags"


def _unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Fields the API server would drop or refuse under strict field validation (not in the CRD schema)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    unknown = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                unknown.append(f"{path}.{key}")
            else:
                unknown += _unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            unknown += _unknown_fields(item, schema["items"], f"{path}[{i}]")
    return unknown


def _named(manifests, kind, name):
    return next(o for o in manifests if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.fixture(scope="module")
def pod_template_file(manifests, tmp_path_factory):
    template = _named(manifests["local"], "ConfigMap", f"{RELEASE}-worker-pod-template")
    path = tmp_path_factory.mktemp("pod-template") / "pod_template.yaml"
    path.write_text(template["data"]["pod_template.yaml"])
    return path


@pytest.fixture(scope="module")
def dagbag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    if not any(p.name != "__init__.py" and not p.name.startswith("_") for p in DAGS_DIR.glob("*.py")):
        pytest.skip("no DAG files under pipelines/kpi/dags yet")
    bag = DagBag(dag_folder=str(DAGS_DIR), include_examples=False)
    assert bag.import_errors == {}, bag.import_errors
    return bag


def test_every_task_of_every_dag_gets_a_valid_worker_pod(dagbag, pod_template_file):
    import kubernetes_validate
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import ApiClient

    base = PodGenerator.deserialize_model_file(str(pod_template_file))
    serialize = ApiClient().sanitize_for_serialization
    built = 0
    for dag_id, dag in sorted(dagbag.dags.items()):
        for task in dag.tasks:
            override = (task.executor_config or {}).get("pod_override")
            pod = PodGenerator.construct_pod(
                dag_id=dag_id, task_id=task.task_id, pod_id=f"{dag_id}-{task.task_id}"[:60].replace("_", "-"),
                try_number=1, kube_image="kpi-airflow:local", date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                args=["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "{}"],
                pod_override_object=override, base_worker_pod=base, namespace="kpi", scheduler_job_id="1",
                run_id="manual__2026-01-01", map_index=-1,
            )
            manifest = serialize(pod)
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
            container = next(c for c in manifest["spec"]["containers"] if c["name"] == "base")
            where = f"{dag_id}.{task.task_id}"
            assert container["image"] == "kpi-airflow:local", where
            assert manifest["spec"]["serviceAccountName"] == "kpi-airflow-worker", where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert manifest["spec"]["securityContext"]["runAsNonRoot"] is True, where
            env = {e["name"] for e in container.get("env", [])}
            assert {"KPI_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env, where
            refs = {ref["configMapRef"]["name"] for ref in container["envFrom"] if "configMapRef" in ref}
            assert refs == {f"{RELEASE}-settings"}, where
            built += 1
    assert built >= len(dagbag.dags)


def test_the_churn_spark_application_validates_against_the_operator_crd(manifests, monkeypatch):
    import jsonschema

    spark_submit = pytest.importorskip("kpi.churn.spark_submit", reason="kpi.churn.spark_submit not written yet")
    from kpi.settings import reload_settings

    crd = yaml.safe_load(reference_file("schemas", "sparkoperator.k8s.io_sparkapplications.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta2")
    schema = version["schema"]["openAPIV3Schema"]

    # the settings exactly as the chart hands them to the worker pods
    settings_map = _named(manifests["local"], "ConfigMap", f"{RELEASE}-settings")["data"]
    for key in [k for k in list(__import__("os").environ) if k.startswith("KPI_")]:
        monkeypatch.delenv(key, raising=False)
    for key, value in settings_map.items():
        monkeypatch.setenv(key, value)
    settings = reload_settings()
    try:
        app = spark_submit.render_spark_application(settings, settings.churn_data_url, dt.date(2026, 1, 31))
    finally:
        monkeypatch.undo()
        reload_settings()
    jsonschema.validate(app, schema)
    assert _unknown_fields(app, schema) == []
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and app["metadata"]["namespace"] == "kpi"
    assert app["spec"]["image"] == settings_map["KPI_SPARK_IMAGE"]
    assert app["spec"]["mainApplicationFile"] == "local:///opt/kpi/pipelines/kpi/churn/job.py"

    # every Secret and service account the driver and executors name is one the chart renders
    rendered = {(o["kind"], o["metadata"]["name"]): o for o in manifests["local"]}
    for role in ("driver", "executor"):
        spec = app["spec"][role]
        assert ("ServiceAccount", spec["serviceAccount"]) in rendered
        for item in spec.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = rendered[("Secret", ref["name"])]
                assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}, ref
        # driver and executor pods carry the label the NetworkPolicies admit
        assert spec["labels"]["app.kubernetes.io/part-of"] == "kpi-platform"
