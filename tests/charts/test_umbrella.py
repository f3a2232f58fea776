"""The umbrella chart, rendered with Helm's own engine for every environment file, checked object by object."""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml

from tests.conftest import reference_file

from .platform import (
    CHARTS,
    ENVIRONMENTS,
    FIRST_PARTY,
    KUBE_VERSION,
    RELEASE,
    ROOT,
    UMBRELLA,
    UPSTREAM_OBJECTS,
    load_values,
    objects,
    pod_specs,
    render,
)

ENVS = sorted(ENVIRONMENTS)


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec.get("containers", [])


def _workloads(manifests):
    return [o for o in manifests if pod_specs(o)]


def test_chart_lock_pins_the_upstream_charts_as_chart_yaml_declares():
    chart = yaml.safe_load((UMBRELLA / "Chart.yaml").read_text())
    lock = yaml.safe_load((UMBRELLA / "Chart.lock").read_text())
    declared = {d["name"]: (d["version"], d["repository"]) for d in chart["dependencies"]}
    locked = {d["name"]: (d["version"], d["repository"]) for d in lock["dependencies"]}
    assert declared == locked
    assert declared["airflow"] == ("1.22.0", "https://airflow.apache.org")
    assert re.fullmatch(r"2\.5\.\d+", declared["spark-operator"][0])
    for name in FIRST_PARTY:
        version = yaml.safe_load((CHARTS / name / "Chart.yaml").read_text())["version"]
        assert declared[name] == (version, f"file://../{name}")


def test_chart_lock_digest_is_accepted_by_helm_dependency_build(tmp_path):
    """Helm refuses a lock out of sync with Chart.yaml before it goes to the network: getting past that
    check (to the repository download, impossible offline) proves the hand-written digest."""
    import shutil

    import helm_python

    helm_python.disable_logging()
    for name in ("kpi-platform", *FIRST_PARTY):
        shutil.copytree(CHARTS / name, tmp_path / name, symlinks=False)
    with pytest.raises(helm_python.HelmError) as failure:
        helm_python.dependency_build(tmp_path / "kpi-platform", skip_refresh=True)
    assert "out of sync" not in str(failure.value), failure.value

    lock = tmp_path / "kpi-platform" / "Chart.lock"
    lock.write_text(lock.read_text().replace("version: 1.22.0", "version: 1.21.0"))
    with pytest.raises(helm_python.HelmError, match="out of sync"):
        helm_python.dependency_build(tmp_path / "kpi-platform", skip_refresh=True)


def test_helm_lint_finds_no_errors(umbrella):
    import helm_python

    for name in FIRST_PARTY:
        report = helm_python.lint(CHARTS / name, strict=True)
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report
    for env in ENVS:
        report = helm_python.lint(umbrella, load_values(env), namespace="kpi", kube_version=f"v{KUBE_VERSION}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        # only the upstream charts are missing (downloaded by `helm dependency build` on the user's machine)
        assert [m["error"] for m in problems] in ([], ["chart directory is missing these dependencies: airflow,spark-operator"]), report
        assert report["errors"] == [], report


@pytest.mark.parametrize("env", ENVS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(manifests, env):
    import kubernetes_validate

    docs = manifests[env]
    assert len(docs) > 20
    for obj in docs:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("env", ENVS)
def test_every_container_has_requests_limits_and_runs_as_non_root(manifests, env):
    checked = 0
    for obj in _workloads(manifests[env]):
        for spec in pod_specs(obj):
            pod_ctx = spec.get("securityContext", {})
            assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", obj["metadata"]["name"]
            for container in _containers(spec):
                where = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
                resources = container.get("resources", {})
                assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
                assert {"cpu", "memory"} <= set(resources.get("limits", {})), where
                ctx = container.get("securityContext", {})
                assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
                assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 0)) != 0, where
                assert ctx.get("allowPrivilegeEscalation") is False, where
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
                assert ctx.get("readOnlyRootFilesystem") is True, where
                checked += 1
    assert checked >= 6


def _dockerfile_images() -> set[str]:
    return {p.parent.name for p in (ROOT / "images").glob("*/Dockerfile")}


@pytest.mark.parametrize("env", ENVS)
def test_every_image_is_built_from_images_or_pinned(manifests, env):
    ours = _dockerfile_images()
    for obj in _workloads(manifests[env]):
        for spec in pod_specs(obj):
            for container in _containers(spec):
                image = container["image"]
                repo, _, tag = image.rpartition(":")
                assert repo and tag and tag != "latest", image
                name = repo.rsplit("/", 1)[-1]
                if name.startswith("kpi-") or repo.startswith("registry.example.com/kpi/"):
                    assert name.removeprefix("kpi-") in ours, f"{image}: no images/<name>/Dockerfile builds it"
                else:
                    # upstream images are pinned to an immutable release, never a moving major tag
                    assert re.search(r"\d+\.\d+|RELEASE\.\d{4}", tag), image


def _references(obj: dict) -> set[tuple[str, str]]:
    """(kind, name) of every Secret, ConfigMap, ServiceAccount, PVC and Service a workload or binding names."""
    refs: set[tuple[str, str]] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                    refs.add(("Secret", value["name"]))
                elif key in ("configMapKeyRef", "configMapRef") and isinstance(value, dict):
                    refs.add(("ConfigMap", value["name"]))
                elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                    refs.add(("Secret", value["secretName"]))
                elif key == "configMap" and isinstance(value, dict) and "name" in value:
                    refs.add(("ConfigMap", value["name"]))
                elif key == "persistentVolumeClaim" and isinstance(value, dict):
                    refs.add(("PersistentVolumeClaim", value["claimName"]))
                elif key == "serviceAccountName":
                    refs.add(("ServiceAccount", value))
                elif key == "serviceName":
                    refs.add(("Service", value))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj.get("spec", {}))
    if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        for subject in obj["subjects"]:
            refs.add((subject["kind"], subject["name"]))
        refs.add((obj["roleRef"]["kind"], obj["roleRef"]["name"]))
    return refs


@pytest.mark.parametrize("env", ENVS)
def test_every_referenced_object_is_rendered_or_made_by_a_named_upstream_chart(manifests, renders, env):
    docs = list(manifests[env])
    # the worker pod template is shipped inside a ConfigMap: its references count too
    template = next(o for o in docs if o["metadata"]["name"] == f"{RELEASE}-worker-pod-template")
    docs.append(yaml.safe_load(template["data"]["pod_template.yaml"]))
    rendered = {(o["kind"], o["metadata"]["name"]) for o in manifests[env]}
    missing = []
    for obj in docs:
        for ref in _references(obj):
            if ref not in rendered and ref not in UPSTREAM_OBJECTS:
                missing.append((obj["metadata"]["name"], ref))
    assert missing == []
    # the values for the upstream Airflow chart name our Secrets and ConfigMaps: they must exist too
    values = yaml.safe_load((UMBRELLA / "values.yaml").read_text())["airflow"]
    named = {
        ("Secret", values["data"]["metadataSecretName"]), ("Secret", values["fernetKeySecretName"]),
        ("Secret", values["apiSecretKeySecretName"]), ("Secret", values["jwtSecretName"]),
        ("Secret", values["apiServer"]["extraVolumes"][0]["secret"]["secretName"]),
        ("ConfigMap", values["scheduler"]["extraVolumes"][0]["configMap"]["name"]),
        ("ServiceAccount", values["workers"]["serviceAccount"]["name"]),
        ("ServiceAccount", values["workers"]["kubernetes"]["serviceAccount"]["name"]),
    }
    for text in (values["extraEnvFrom"], values["extraEnv"]):
        for kind, name in re.findall(r"(secret|configMap)\w*:\s*\n\s*name: '\{\{ \.Release\.Name \}\}-([\w-]+)'", text):
            named.add(("Secret" if kind == "secret" else "ConfigMap", f"{RELEASE}-{name}"))
    assert len(named) >= 10
    assert named - rendered == set()


def test_secrets_are_generated_never_committed(manifests):
    local = manifests["local"]
    secrets = {o["metadata"]["name"]: o for o in local if o["kind"] == "Secret"}
    assert {f"{RELEASE}-postgres", f"{RELEASE}-minio", f"{RELEASE}-airflow-fernet"} <= set(secrets)
    for name in (f"{RELEASE}-postgres", f"{RELEASE}-minio", f"{RELEASE}-airflow-fernet"):
        assert secrets[name]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # derived URLs use the very passwords of the generated Secret
    password = base64.b64decode(secrets[f"{RELEASE}-postgres"]["data"]["kpi-password"]).decode()
    assert f"kpi:{password}@{RELEASE}-postgres:5432/kpi" in secrets[f"{RELEASE}-warehouse"]["stringData"]["url"]
    fernet = base64.b64decode(secrets[f"{RELEASE}-airflow-fernet"]["data"]["fernet-key"])
    assert len(base64.urlsafe_b64decode(fernet)) == 32
    users = json.loads(secrets[f"{RELEASE}-airflow-ui"]["stringData"]["passwords.json"])
    assert users["admin"] == secrets[f"{RELEASE}-airflow-ui"]["stringData"]["admin-password"]
    # no committed values file carries a secret
    for path in [*ENVIRONMENTS.values(), *CHARTS.glob("*/values.yaml")]:
        text = path.read_text().lower()
        assert not re.search(r"(password|secret_?key|secretkey|fernetkey)\s*:\s*['\"]?\w{6,}", text.replace("passwordkey", "")), path


def test_secrets_differ_between_two_fresh_installs(umbrella):
    first = objects(render(umbrella, load_values("local")))
    second = objects(render(umbrella, load_values("local")))
    pick = lambda docs: next(o for o in docs if o["metadata"]["name"] == f"{RELEASE}-postgres" and o["kind"] == "Secret")
    assert pick(first)["data"] != pick(second)["data"]


@pytest.mark.parametrize("env", ENVS)
def test_pods_reading_config_carry_checksum_annotations(manifests, env):
    for obj in _workloads(manifests[env]):
        if obj["kind"] in ("Deployment", "StatefulSet") and obj["metadata"]["name"] != f"{RELEASE}-minio":
            annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
            assert any(k.startswith("checksum/") for k in annotations), obj["metadata"]["name"]


def test_network_policies_admit_only_platform_pods_to_postgres_and_minio(manifests):
    policies = {o["metadata"]["name"]: o for o in manifests["local"] if o["kind"] == "NetworkPolicy"}
    for target in ("postgres", "minio"):
        spec = policies[f"{RELEASE}-{target}-clients"]["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == target
        sources = [peer["podSelector"]["matchLabels"] for rule in spec["ingress"] for peer in rule["from"]]
        assert sources == [{"app.kubernetes.io/part-of": "kpi-platform"}, {"release": RELEASE}]


def test_worker_rbac_manages_spark_applications_in_its_namespace_only(manifests):
    docs = manifests["local"]
    assert not [o for o in docs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = next(o for o in docs if o["kind"] == "Role" and o["metadata"]["name"] == f"{RELEASE}-airflow-spark-submitter")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "watch", "delete"} <= verbs[("sparkoperator.k8s.io", "sparkapplications")]
    assert "get" in verbs[("", "pods/log")]
    binding = next(o for o in docs if o["kind"] == "RoleBinding" and o["metadata"]["name"] == role["metadata"]["name"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kpi-airflow-worker", "namespace": "kpi"}]


def test_notes_print_the_port_forward_commands(renders):
    notes = next(text for path, text in renders["local"].items() if path.endswith("NOTES.txt"))
    for service, port in (("api-server", 8080), ("mlflow", 5000), ("minio", 9001), ("dashboard", 8501)):
        assert f"port-forward svc/{RELEASE}-{service} {port}:{port}" in notes


def test_another_release_name_fails_with_the_fix(umbrella):
    import helm_python

    values = load_values("local")
    values["airflow"]["enabled"] = True  # the guard speaks for the Airflow values, which name release "kpi"
    with pytest.raises(helm_python.HelmError, match='install as release \\\\?"kpi\\\\?"'):
        render(umbrella, values, name="other")


def test_postgres_is_initialised_from_the_repository_sql(manifests):
    sql = next(o for o in manifests["local"] if o["metadata"]["name"] == f"{RELEASE}-postgres-sql")
    files = sorted((ROOT / "sql" / "init").glob("*.sql"))
    assert files and sorted(sql["data"]) == [f.name for f in files]
    for f in files:
        assert sql["data"][f.name].strip() == f.read_text().strip()


@pytest.mark.parametrize("env", ENVS)
def test_airflow_values_validate_against_the_official_chart_schema(env):
    import jsonschema

    schema = json.loads(reference_file("schemas", "airflow-chart-values.schema.json").read_text())
    merged = yaml.safe_load((UMBRELLA / "values.yaml").read_text())["airflow"]

    def merge(base, override):
        for key, value in override.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return base

    merge(merged, (yaml.safe_load(ENVIRONMENTS[env].read_text()) or {}).get("airflow", {}))
    merged.pop("enabled")  # the umbrella's dependency condition
    jsonschema.validate(merged, schema)
    assert merged["executor"] == "KubernetesExecutor"
    assert merged["airflowVersion"].startswith("3.")


def test_a_changed_platform_setting_rolls_the_dashboard(umbrella):
    def annotations(values):
        docs = objects(render(umbrella, values))
        settings = next(o for o in docs if o["metadata"]["name"] == f"{RELEASE}-settings")
        dashboard = next(o for o in docs if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{RELEASE}-dashboard")
        return settings["data"], dashboard["spec"]["template"]["metadata"]["annotations"]

    values = load_values("local")
    before_settings, before = annotations(values)
    values["global"]["platform"]["storageUrl"] = "s3://kpi/elsewhere"
    after_settings, after = annotations(values)
    assert after_settings["KPI_STORAGE_URL"] == "s3://kpi/elsewhere" != before_settings["KPI_STORAGE_URL"]
    assert after["checksum/settings"] != before["checksum/settings"]
    assert after["checksum/config"] == before["checksum/config"]


@pytest.mark.slow  # imports Airflow's API server package
def test_airflow_api_server_keeps_the_generated_admin_password(manifests, tmp_path, monkeypatch):
    """SimpleAuthManager, as the API server runs it, reads the password our Secret carries (the init
    container copies the Secret's passwords.json to a writable file, which is what the manager needs)."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    secret = next(o for o in manifests["local"] if o["kind"] == "Secret" and o["metadata"]["name"] == f"{RELEASE}-airflow-ui")
    config = yaml.safe_load((UMBRELLA / "values.yaml").read_text())["airflow"]
    init = config["apiServer"]["extraInitContainers"][0]
    assert init["command"][-1] == config["config"]["core"]["simple_auth_manager_passwords_file"]
    passwords = tmp_path / "passwords.json"
    passwords.write_text(secret["stringData"]["passwords.json"])  # what the init container copies
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", config["config"]["core"]["simple_auth_manager_users"])
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    SimpleAuthManager().init()
    assert SimpleAuthManager.get_passwords() == {"admin": secret["stringData"]["admin-password"]}


@pytest.mark.parametrize("env", ENVS)
def test_worker_pods_and_the_bootstrap_job_run_the_airflow_chart_image(manifests, env):
    airflow = yaml.safe_load((UMBRELLA / "values.yaml").read_text())["airflow"]["images"]["airflow"]
    airflow = {**airflow, **((yaml.safe_load(ENVIRONMENTS[env].read_text()) or {}).get("airflow", {})
                             .get("images", {}).get("airflow", {}))}
    expected = f"{airflow['repository']}:{airflow['tag']}"
    template = next(o for o in manifests[env] if o["metadata"]["name"] == f"{RELEASE}-worker-pod-template")
    worker = yaml.safe_load(template["data"]["pod_template.yaml"])["spec"]["containers"][0]
    job = next(o for o in manifests[env] if o["kind"] == "Job" and o["metadata"]["name"].startswith(f"{RELEASE}-db-bootstrap"))
    assert worker["image"] == job["spec"]["template"]["spec"]["containers"][0]["image"] == expected
    assert worker["imagePullPolicy"] == airflow["pullPolicy"]
