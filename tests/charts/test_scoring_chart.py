"""The scoring API's chart component (charts/scoring) in the full render: the command a machine runs, probes on
/healthz, a NetworkPolicy that admits only the platform's pods, no storage keys, a port in NOTES and `task ui`."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from .platform import CHARTS, ENVIRONMENTS, RELEASE, ROOT, containers, merged_values, named

ENVS = sorted(ENVIRONMENTS)
CHART_VALUES = yaml.safe_load((CHARTS / "scoring" / "values.yaml").read_text())


def _scoring(docs: list[dict]) -> tuple[dict, dict]:
    deployment = named(docs, "Deployment", f"{RELEASE}-scoring")
    return deployment, deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("env", ENVS)
def test_the_deployment_runs_kpi_churn_serve_behind_a_service_with_probes_on_healthz(manifests, env):
    docs = manifests[env]
    _, spec = _scoring(docs)
    (container,) = containers(spec)
    port = CHART_VALUES["service"]["port"]
    assert container["command"] == ["kpi", "churn", "serve", "--host", "0.0.0.0", "--port", str(port)]
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    service = named(docs, "Service", f"{RELEASE}-scoring")
    assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "scoring", "app.kubernetes.io/instance": RELEASE}


def test_the_pod_runs_the_dashboard_image_which_carries_the_api_and_its_server(manifests):
    _, spec = _scoring(manifests["local"])
    (container,) = containers(spec)
    assert container["image"] == "kpi-dashboard:local" and container["imagePullPolicy"] == "Never"
    pins = {line.split("==")[0] for line in (ROOT / "images" / "dashboard" / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    assert {"fastapi", "uvicorn", "mlflow", "numba", "pydantic-settings"} <= pins
    dockerfile = (ROOT / "images" / "dashboard" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --no-deps /opt/kpi/src" in dockerfile  # installs the `kpi` command
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kpi"] == "kpi.cli:app"


def test_the_api_gets_settings_and_a_read_only_warehouse_role_and_no_storage_keys(manifests):
    docs = manifests["local"]
    _, spec = _scoring(docs)
    (container,) = containers(spec)
    assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-settings"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["KPI_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-warehouse-reader", "key": "url"}
    assert "kpi_reader:" in named(docs, "Secret", f"{RELEASE}-warehouse-reader")["stringData"]["url"]
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)  # MLflow serves the model's artifacts
    assert "--serve-artifacts" in named(docs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    api = CHART_VALUES["api"]
    assert (env["KPI_CHURN_SERVE_CHAMPION_TTL_SECONDS"]["value"], env["KPI_CHURN_SERVE_TOP_K"]["value"],
            env["KPI_CHURN_SERVE_MAX_USERS"]["value"]) == (str(api["championTtlSeconds"]), str(api["topK"]),
                                                            str(api["maxUsers"]))
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # MLflow's downloads, under HOME


def test_the_network_policy_admits_only_platform_pods_on_the_api_port(manifests):
    policy = named(manifests["local"], "NetworkPolicy", f"{RELEASE}-scoring-clients")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "scoring",
                                                    "app.kubernetes.io/instance": RELEASE}
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "kpi-platform"}}},
                            {"podSelector": {"matchLabels": {"release": RELEASE}}}]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    # the platform's pods that may call it carry a label the policy admits: the dashboard, JupyterLab, Airflow's
    # task pods (the worker pod template) and its scheduler
    docs = manifests["local"]
    template = yaml.safe_load(named(docs, "ConfigMap", f"{RELEASE}-worker-pod-template")["data"]["pod_template.yaml"])
    callers = {"worker pod": template["metadata"]["labels"]}
    for name in ("dashboard", "jupyterlab", "scheduler"):
        callers[name] = named(docs, "Deployment", f"{RELEASE}-{name}")["spec"]["template"]["metadata"]["labels"]
    for name, labels in callers.items():
        assert labels.get("app.kubernetes.io/part-of") == "kpi-platform" or labels.get("release") == RELEASE, name
    # an environment admits its consuming services explicitly
    prod = named(manifests["prod-example"], "NetworkPolicy", f"{RELEASE}-scoring-clients")["spec"]["ingress"][0]
    assert {"namespaceSelector": {"matchLabels": {"kpi-scores": "read"}}} in prod["from"]


def test_notes_and_task_ui_give_the_api_s_port_forward(renders):
    text = renders["local"]["kpi-platform/templates/NOTES.txt"]
    assert f"port-forward svc/{RELEASE}-scoring 8000:8000" in text
    ui = yaml.safe_load((ROOT / "taskfiles" / "cluster.yml").read_text())["tasks"]["ui"]["cmds"][0]
    assert "port-forward svc/{{.RELEASE}}-scoring 8000:8000" in ui
    assert re.search(r"Scoring\s+http://localhost:8000", ui)


def test_scoring_is_on_for_kind_and_its_values_are_described(manifests):
    assert merged_values("local")["scoring"]["enabled"] is True
    kinds = {(o["kind"], o["metadata"]["name"]) for o in manifests["local"]}
    assert {("Deployment", f"{RELEASE}-scoring"), ("Service", f"{RELEASE}-scoring"),
            ("NetworkPolicy", f"{RELEASE}-scoring-clients")} <= kinds
