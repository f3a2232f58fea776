"""The umbrella chart rendered with Helm's own engine and the real upstream subcharts (Airflow chart 1.21.0,
spark-operator 2.5.2), for every values-*.yaml at the top level, checked object by object."""

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
    containers,
    load_values,
    merged_values,
    named,
    notes,
    objects,
    pod_specs,
    render,
)

ENVS = sorted(ENVIRONMENTS)
# Objects that exist in the cluster without being in the render, and who makes them: the webhook of the
# Spark operator writes its own serving certificate into this Secret when it starts.
RUNTIME_OBJECTS = {("Secret", f"{RELEASE}-spark-operator-webhook-certs"): "spark-operator webhook (self-signed cert)"}
# TLS Secrets of the prod example's Ingresses: issued by the cluster's cert-manager or copied in by hand
PRECREATED_TLS = {("Secret", f"{RELEASE}-dashboard-tls"), ("Secret", f"{RELEASE}-airflow-tls")}


def _workloads(docs):
    return [o for o in docs if pod_specs(o)]


def _source(obj: dict) -> str:
    """Which chart rendered an object (the chart label conventions of the three origins)."""
    labels = obj["metadata"].get("labels", {})
    chart = labels.get("chart") or labels.get("helm.sh/chart") or ""
    return chart.rsplit("-", 1)[0] if chart else "?"


def _umbrella_secret_names(docs: list[dict]) -> set[str]:
    return {o["metadata"]["name"] for o in docs if o["kind"] == "Secret"
            and o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "kpi-platform"}


# --- what is pinned and rendered --------------------------------------------------------------------------


def test_chart_yaml_and_lock_pin_exactly_the_upstream_releases_the_tests_render(umbrella):
    from kpi.platform.chart import locked_upstream, lock_digest, upstream_archives

    chart = yaml.safe_load((UMBRELLA / "Chart.yaml").read_text())
    lock = yaml.safe_load((UMBRELLA / "Chart.lock").read_text())
    declared = {d["name"]: (d["version"], d["repository"]) for d in chart["dependencies"]}
    locked = {d["name"]: (d["version"], d["repository"]) for d in lock["dependencies"]}
    assert declared == locked
    assert declared["airflow"] == ("1.21.0", "https://airflow.apache.org")
    assert declared["spark-operator"] == ("2.5.2", "https://kubeflow.github.io/spark-operator")
    for name in FIRST_PARTY:
        version = yaml.safe_load((CHARTS / name / "Chart.yaml").read_text())["version"]
        assert declared[name] == (version, f"file://../{name}")
    assert lock["digest"] == lock_digest()
    # the archives rendered are those releases, byte for byte what `helm dependency build` would place
    archives = upstream_archives()
    assert {n: a.name for n, a in archives.items()} == {n: f"{n}-{v}.tgz" for n, v in locked_upstream().items()}
    assert sorted(p.name for p in (umbrella / "charts").glob("*.tgz")) == sorted(a.name for a in archives.values())


def test_the_airflow_version_matches_the_airflow_image():
    dockerfile = (ROOT / "images" / "airflow" / "Dockerfile").read_text()
    base = re.search(r"^FROM apache/airflow:(\d+\.\d+\.\d+)-python", dockerfile, re.M).group(1)
    for env in ENVS:
        assert merged_values(env)["airflow"]["airflowVersion"] == base, env


def test_chart_lock_digest_is_accepted_by_helm_dependency_build(tmp_path):
    """Helm refuses a lock out of sync with Chart.yaml before it goes to the network: getting past that
    check (to the repository download, impossible offline) proves the digest."""
    import shutil

    import helm_python

    helm_python.disable_logging()
    for name in ("kpi-platform", *FIRST_PARTY):
        shutil.copytree(CHARTS / name, tmp_path / name, symlinks=False, ignore=shutil.ignore_patterns("*.tgz"))
    with pytest.raises(helm_python.HelmError) as failure:
        helm_python.dependency_build(tmp_path / "kpi-platform", skip_refresh=True)
    assert "out of sync" not in str(failure.value), failure.value

    lock = tmp_path / "kpi-platform" / "Chart.lock"
    lock.write_text(lock.read_text().replace("version: 1.21.0", "version: 1.20.0"))
    with pytest.raises(helm_python.HelmError, match="out of sync"):
        helm_python.dependency_build(tmp_path / "kpi-platform", skip_refresh=True)


def test_helm_lint_finds_no_error_or_warning(umbrella):
    import helm_python

    for name in FIRST_PARTY:
        report = helm_python.lint(CHARTS / name, strict=True)
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report
    for env in ENVS:
        report = helm_python.lint(umbrella, load_values(env), namespace="kpi", kube_version=f"v{KUBE_VERSION}")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("env", ENVS)
def test_the_full_render_holds_every_chart_of_the_platform(manifests, env):
    docs = manifests[env]
    sources = {_source(o) for o in docs}
    enabled = {name for name in FIRST_PARTY if merged_values(env)[name]["enabled"]}
    assert {"airflow", "spark-operator", "kpi-platform", *enabled} <= sources, sources
    assert "jupyterlab" in enabled or env != "local"  # on in values-local.yaml, off by default
    kinds = {(o["kind"], o["metadata"]["name"]) for o in docs}
    for component in ("scheduler", "api-server", "dag-processor", "triggerer"):
        assert ("Deployment", f"{RELEASE}-{component}") in kinds
    assert ("Deployment", f"{RELEASE}-spark-operator-controller") in kinds
    assert ("ConfigMap", f"{RELEASE}-config") in kinds  # airflow.cfg of the release


@pytest.mark.parametrize("env", ENVS)
def test_no_chart_prints_a_deprecation_or_warning_for_our_values(renders, env):
    for path, text in notes(renders[env]).items():
        flagged = [line.strip() for line in text.splitlines() if re.search(r"DEPRECAT|WARNING", line, re.I)]
        assert flagged == [], f"{path}: {flagged}"


def test_a_deprecated_value_would_fail_the_warning_check(umbrella):
    values = load_values("local")
    values.setdefault("airflow", {})["workers"] = {"resources": {"requests": {"cpu": "1"}}}
    printed = "".join(notes(render(umbrella, values)).values())
    assert "DEPRECATION WARNING" in printed and "workers.resources" in printed


@pytest.mark.parametrize("env", ENVS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(manifests, env):
    import kubernetes_validate

    docs = manifests[env]
    assert len(docs) > 50
    for obj in docs:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# --- wiring: every name and address a pod uses exists ------------------------------------------------------


def _references(obj: dict) -> set[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every Secret, ConfigMap, ServiceAccount, PVC, Service and Role an object
    names; optional references are left out (the pod starts without them)."""
    refs: set[tuple[str, str, str | None]] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(value, (dict, list, str)):
                    continue
                if isinstance(value, dict) and value.get("optional") is True:
                    continue
                if key == "secretKeyRef":
                    refs.add(("Secret", value["name"], value["key"]))
                elif key == "configMapKeyRef":
                    refs.add(("ConfigMap", value["name"], value["key"]))
                elif key == "secretRef" and "name" in value:
                    refs.add(("Secret", value["name"], None))
                elif key == "configMapRef" and "name" in value:
                    refs.add(("ConfigMap", value["name"], None))
                elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                    refs.add(("Secret", value["secretName"], None))
                    refs.update(("Secret", value["secretName"], i["key"]) for i in value.get("items", []))
                elif key == "configMap" and isinstance(value, dict) and "name" in value:
                    refs.add(("ConfigMap", value["name"], None))
                    refs.update(("ConfigMap", value["name"], i["key"]) for i in value.get("items", []))
                elif key == "persistentVolumeClaim":
                    refs.add(("PersistentVolumeClaim", value["claimName"], None))
                elif key == "serviceAccountName":
                    refs.add(("ServiceAccount", value, None))
                elif key == "serviceName" and isinstance(value, str):
                    refs.add(("Service", value, None))
                elif key == "tls" and isinstance(value, list):
                    refs.update(("Secret", t["secretName"], None) for t in value if t.get("secretName"))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj.get("spec", {}))
    if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        for subject in obj["subjects"]:
            refs.add((subject["kind"], subject["name"], None))
        refs.add((obj["roleRef"]["kind"], obj["roleRef"]["name"], None))
    if obj["kind"] == "StatefulSet":  # claims come from the set's own templates
        claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        refs = {r for r in refs if not (r[0] == "PersistentVolumeClaim" and r[1] in claims)}
    return refs


def _with_pod_template(docs: list[dict]) -> list[dict]:
    """The render plus the worker pod template shipped inside a ConfigMap (its references count too)."""
    template = named(docs, "ConfigMap", f"{RELEASE}-worker-pod-template")
    return [*docs, yaml.safe_load(template["data"]["pod_template.yaml"])]


def _keys(obj: dict) -> set[str]:
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {}) | set(obj.get("binaryData") or {})


def _missing_references(docs: list[dict]) -> list[tuple]:
    rendered = {(o["kind"], o["metadata"]["name"]): o for o in docs}
    missing = []
    for obj in _with_pod_template(docs):
        for kind, name, key in _references(obj):
            target = rendered.get((kind, name))
            if target is None:
                if (kind, name) not in RUNTIME_OBJECTS:
                    missing.append((obj["metadata"]["name"], kind, name, key))
            elif key is not None and key not in _keys(target):
                missing.append((obj["metadata"]["name"], kind, name, key))
    return missing


def test_every_reference_and_key_of_the_local_render_exists_in_it(manifests):
    assert _missing_references(manifests["local"]) == []


def test_the_reference_check_finds_a_missing_key(manifests):
    docs = [dict(o) for o in manifests["local"]]
    warehouse = next(o for o in docs if o["kind"] == "Secret" and o["metadata"]["name"] == f"{RELEASE}-warehouse")
    docs[docs.index(warehouse)] = {**warehouse, "stringData": {"URL": "typo"}}
    assert (f"{RELEASE}-scheduler", "Secret", f"{RELEASE}-warehouse", "url") in _missing_references(docs)


def test_with_secrets_create_false_only_the_documented_secrets_are_expected_from_outside(manifests, umbrella):
    generated = _umbrella_secret_names(manifests["local"])
    assert len(generated) >= 10
    values = load_values("local")
    values["secrets"] = {"create": False}
    docs = objects(render(umbrella, values))
    assert _umbrella_secret_names(docs) == set()
    expected_outside = {m[1:3] for m in _missing_references(docs)}
    assert expected_outside == {("Secret", name) for name in generated}
    # the prod example uses that mode; its TLS Secrets come from outside too
    prod = {m[1:3] for m in _missing_references(manifests["prod-example"])}
    assert prod <= {("Secret", name) for name in generated} | PRECREATED_TLS
    assert _umbrella_secret_names(manifests["prod-example"]) == set()
    # every name and key a secret manager must provide is documented
    doc = (ROOT / "docs" / "platform.md").read_text()
    for secret in (o for o in manifests["local"] if o["kind"] == "Secret" and o["metadata"]["name"] in generated):
        assert f"`{secret['metadata']['name']}`" in doc, secret["metadata"]["name"]
        for key in _keys(secret):
            assert f"`{key}`" in doc, (secret["metadata"]["name"], key)


_ADDRESS = re.compile(r"(?:^|[\s/@,='\"(])([a-z][a-z0-9-]*(?:\.[a-z0-9-]+)*):(\d{2,5})(?=[/\s,'\")]|$)", re.M)
_LOOPBACK = {"localhost", "127.0.0.1", "0.0.0.0"}


def _texts(docs: list[dict]) -> list[tuple[str, str]]:
    """(where, text) of every env value, command line, ConfigMap entry (airflow.cfg included) and Secret value
    that a pod reads."""
    texts = []
    read_secrets = {r[1] for o in _with_pod_template(docs) for r in _references(o) if r[0] == "Secret"}
    for obj in _with_pod_template(docs):
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":
            texts += [(f"{name}/{k}", str(v)) for k, v in (obj.get("data") or {}).items()]
        elif obj["kind"] == "Secret" and name in read_secrets:
            texts += [(f"{name}/{k}", base64.b64decode(v).decode(errors="replace"))
                      for k, v in (obj.get("data") or {}).items()]
            texts += [(f"{name}/{k}", str(v)) for k, v in (obj.get("stringData") or {}).items()]
        for spec in pod_specs(obj):
            for c in containers(spec):
                texts += [(f"{name}/{c['name']}/env/{e['name']}", str(e["value"])) for e in c.get("env", [])
                          if "value" in e]
                texts.append((f"{name}/{c['name']}/command", " ".join(c.get("command", []) + c.get("args", []))))
    return texts


def _unmatched_addresses(docs: list[dict]) -> list[str]:
    services = {o["metadata"]["name"]: {p["port"] for p in o["spec"]["ports"]} for o in docs if o["kind"] == "Service"}
    namespace_suffixes = ("", f".{RELEASE}", f".{RELEASE}.svc", f".{RELEASE}.svc.cluster.local")
    bad = []
    for where, text in _texts(docs):
        for host, port in _ADDRESS.findall(text):
            if host in _LOOPBACK or "." in host and not host.endswith((".svc", ".cluster.local", f".{RELEASE}")):
                continue  # a port-forward's loopback, or a host outside the cluster
            service = next((host.removesuffix(s) for s in reversed(namespace_suffixes) if host.endswith(s)
                            and host.removesuffix(s) in services), None)
            if service is None or int(port) not in services[service]:
                bad.append(f"{where}: {host}:{port}")
    return bad


@pytest.mark.parametrize("env", ENVS)
def test_every_address_a_pod_is_given_is_a_rendered_service_and_port(manifests, env):
    texts = "\n".join(t for _, t in _texts(manifests[env]))
    expected = [f"{RELEASE}-minio:9000", f"{RELEASE}-mlflow:5000", f"{RELEASE}-api-server:8080"]
    if merged_values(env)["secrets"]["create"]:  # the database URLs live in the generated Secrets
        expected.append(f"{RELEASE}-postgres:5432")
    for address in expected:
        assert address in texts  # the check below sees the addresses that matter
    assert _unmatched_addresses(manifests[env]) == []


def test_the_address_check_finds_a_wrong_port(manifests):
    docs = [dict(o) for o in manifests["local"]]
    settings = named(docs, "ConfigMap", f"{RELEASE}-settings")
    docs[docs.index(settings)] = {**settings, "data": {**settings["data"], "MLFLOW_TRACKING_URI": "http://kpi-mlflow:5001"}}
    assert _unmatched_addresses(docs) == [f"{RELEASE}-settings/MLFLOW_TRACKING_URI: kpi-mlflow:5001"]


# --- pod hygiene -----------------------------------------------------------------------------------------

# The Airflow chart's components write under their home (Python caches, the API server's temporary files)
# and the chart mounts no writable /tmp for them: a read-only root filesystem cannot be set by values alone
# without a cluster to prove it, so it is required of every other pod.
WRITABLE_ROOT = {"airflow"}


@pytest.mark.parametrize("env", ENVS)
def test_every_container_has_requests_limits_and_runs_as_non_root(manifests, env):
    checked = 0
    for obj in _workloads(manifests[env]):
        for spec in pod_specs(obj):
            pod_ctx = spec.get("securityContext", {})
            assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault" or all(
                c.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault"
                for c in containers(spec)), obj["metadata"]["name"]
            for container in containers(spec):
                where = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
                resources = container.get("resources", {})
                assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
                assert {"cpu", "memory"} <= set(resources.get("limits", {})), where
                ctx = container.get("securityContext", {})
                # runAsNonRoot makes the kubelet refuse an image whose user is root, uid set or not
                assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
                assert ctx.get("runAsUser", pod_ctx.get("runAsUser")) != 0, where
                assert ctx.get("allowPrivilegeEscalation") is False, where
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
                if _source(obj) not in WRITABLE_ROOT:
                    assert ctx.get("readOnlyRootFilesystem") is True, where
                checked += 1
    assert checked >= 20


def _dockerfile_images() -> set[str]:
    return {p.parent.name for p in (ROOT / "images").glob("*/Dockerfile")}


@pytest.mark.parametrize("env", ENVS)
def test_every_image_is_built_from_images_or_pinned_and_listed_in_the_docs(manifests, env):
    ours = _dockerfile_images()
    docs_text = (ROOT / "docs" / "platform.md").read_text()
    for obj in _workloads(manifests[env]):
        for spec in pod_specs(obj):
            for container in containers(spec):
                image = container["image"]
                repo, _, tag = image.rpartition(":")
                assert repo and tag and tag != "latest", image
                name = repo.rsplit("/", 1)[-1]
                if name.startswith("kpi-") or repo.startswith("registry.example.com/kpi/"):
                    assert name.removeprefix("kpi-") in ours, f"{image}: no images/<name>/Dockerfile builds it"
                else:
                    # upstream images are pinned to an immutable release, never a moving major tag
                    assert re.search(r"\d+\.\d+|RELEASE\.\d{4}", tag), image
                    assert image in docs_text, f"{image} is not listed in docs/platform.md"


# --- the upgrade path --------------------------------------------------------------------------------------


def _immutable_conflicts(first: list[dict], second: list[dict]) -> list[str]:
    """What a `helm upgrade` from the first render to the second would have to patch in an immutable field."""
    before = {(o["kind"], o["metadata"]["name"]): o for o in first}
    conflicts = []
    for obj in second:
        old = before.get((obj["kind"], obj["metadata"]["name"]))
        if old is None:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Job":
            annotations = obj["metadata"].get("annotations", {})
            recreated = "helm.sh/hook" in annotations and "before-hook-creation" in annotations.get(
                "helm.sh/hook-delete-policy", "")
            if not recreated and old["spec"]["template"] != obj["spec"]["template"]:
                conflicts.append(f"{name}: spec.template")
        elif obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            for field in ("selector", "serviceName", "volumeClaimTemplates"):
                if old["spec"].get(field) != obj["spec"].get(field):
                    conflicts.append(f"{name}: spec.{field}")
    return conflicts


def _upgrade_values(env: str) -> dict:
    values = load_values(env)
    images = values.setdefault("airflow", {}).setdefault("images", {}).setdefault("airflow", {})
    images["tag"] = "upgraded"
    for chart in ("mlflow", "dashboard"):
        values.setdefault(chart, {}).setdefault("image", {})["tag"] = "upgraded"
    values.setdefault("global", {}).setdefault("platform", {})["sparkImage"] = "kpi-spark:upgraded"
    return values


@pytest.mark.parametrize("env", ENVS)
def test_a_quick_second_upgrade_with_new_images_patches_no_immutable_field(manifests, umbrella, env):
    second = objects(render(umbrella, _upgrade_values(env), revision=2))
    assert f"{RELEASE}-db-bootstrap-2" in {o["metadata"]["name"] for o in second}
    assert _immutable_conflicts(manifests[env], second) == []


def test_the_upgrade_check_catches_the_migration_job_without_helm_hooks(umbrella):
    values = load_values("local")
    values.setdefault("airflow", {})["migrateDatabaseJob"] = {"useHelmHooks": False}
    first = objects(render(umbrella, values))
    upgraded = _upgrade_values("local")
    upgraded["airflow"]["migrateDatabaseJob"] = {"useHelmHooks": False}
    second = objects(render(umbrella, upgraded, revision=2))
    assert f"Job/{RELEASE}-run-airflow-migrations: spec.template" in _immutable_conflicts(first, second)


# --- secrets, policies, notes, guards -------------------------------------------------------------------


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
    assert named(first, "Secret", f"{RELEASE}-postgres")["data"] != named(second, "Secret", f"{RELEASE}-postgres")["data"]


@pytest.mark.parametrize("env", ENVS)
def test_pods_reading_a_config_map_of_the_release_carry_checksum_annotations(manifests, env):
    maps = {o["metadata"]["name"] for o in manifests[env] if o["kind"] == "ConfigMap"}
    checked = 0
    for obj in _workloads(manifests[env]):
        if obj["kind"] in ("Deployment", "StatefulSet") and {r[1] for r in _references(obj) if r[0] == "ConfigMap"} & maps:
            annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
            assert any(k.startswith("checksum/") for k in annotations), obj["metadata"]["name"]
            checked += 1
    assert checked >= 6


def test_network_policies_admit_only_platform_pods_to_postgres_and_minio(manifests):
    policies = {o["metadata"]["name"]: o for o in manifests["local"] if o["kind"] == "NetworkPolicy"}
    for target in ("postgres", "minio"):
        spec = policies[f"{RELEASE}-{target}-clients"]["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == target
        sources = [peer["podSelector"]["matchLabels"] for rule in spec["ingress"] for peer in rule["from"]]
        assert sources == [{"app.kubernetes.io/part-of": "kpi-platform"}, {"release": RELEASE}]
    # every Airflow pod that reaches them carries the label the policy admits
    for obj in _workloads(manifests["local"]):
        if _source(obj) == "airflow":
            assert obj["spec"]["template"]["metadata"]["labels"].get("release") == RELEASE, obj["metadata"]["name"]


def test_worker_rbac_manages_spark_applications_in_its_namespace_only(manifests):
    docs = manifests["local"]
    ours = [o for o in docs if _source(o) == "kpi-platform"]
    assert not [o for o in ours if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = named(docs, "Role", f"{RELEASE}-airflow-spark-submitter")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "watch", "delete"} <= verbs[("sparkoperator.k8s.io", "sparkapplications")]
    assert "get" in verbs[("", "pods/log")]
    binding = named(docs, "RoleBinding", role["metadata"]["name"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kpi-airflow-worker", "namespace": "kpi"}]
    # the account is the Airflow chart's, the one our worker pod template runs under
    account = named(docs, "ServiceAccount", "kpi-airflow-worker")
    assert _source(account) == "airflow" and account.get("automountServiceAccountToken", True) is True
    template = yaml.safe_load(named(docs, "ConfigMap", f"{RELEASE}-worker-pod-template")["data"]["pod_template.yaml"])
    assert template["spec"]["serviceAccountName"] == "kpi-airflow-worker"


def test_notes_print_the_port_forward_commands_and_nothing_that_does_not_exist(renders):
    text = renders["local"]["kpi-platform/templates/NOTES.txt"]
    for service, port in (("api-server", 8080), ("mlflow", 5000), ("minio", 9001), ("dashboard", 8501)):
        assert f"port-forward svc/{RELEASE}-{service} {port}:{port}" in text
    # the SparkApplication runs with spark.ui.enabled=false: no Spark UI is advertised
    assert "4040" not in text and "Spark UI" not in text
    ui_task = yaml.safe_load((ROOT / "taskfiles" / "cluster.yml").read_text())["tasks"]["ui"]
    assert "4040" not in json.dumps(ui_task)


def test_another_release_name_fails_with_the_fix(umbrella):
    import helm_python

    with pytest.raises(helm_python.HelmError, match='install as release \\\\?"kpi\\\\?"'):
        render(umbrella, load_values("local"), name="other")


def test_postgres_is_initialised_from_the_repository_sql(manifests):
    sql = named(manifests["local"], "ConfigMap", f"{RELEASE}-postgres-sql")
    files = sorted((ROOT / "sql" / "init").glob("*.sql"))
    assert files and sorted(sql["data"]) == [f.name for f in files]
    for f in files:
        assert sql["data"][f.name].strip() == f.read_text().strip()


@pytest.mark.parametrize("env", ENVS)
def test_airflow_values_validate_against_the_official_chart_schema(env):
    import jsonschema

    schema = json.loads(reference_file("schemas", "airflow-chart-values.schema.json").read_text())
    merged = merged_values(env)["airflow"]
    merged.pop("enabled")  # the umbrella's dependency condition
    jsonschema.validate(merged, schema)
    assert merged["executor"] == "KubernetesExecutor"
    assert merged["airflowVersion"].startswith("3.")


def test_a_changed_platform_setting_rolls_the_dashboard(umbrella):
    def annotations(values):
        docs = objects(render(umbrella, values))
        settings = named(docs, "ConfigMap", f"{RELEASE}-settings")
        dashboard = named(docs, "Deployment", f"{RELEASE}-dashboard")
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

    docs = manifests["local"]
    secret = named(docs, "Secret", f"{RELEASE}-airflow-ui")
    api = named(docs, "Deployment", f"{RELEASE}-api-server")["spec"]["template"]["spec"]
    init = next(c for c in api["initContainers"] if c["name"] == "auth-passwords")
    config = merged_values("local")["airflow"]["config"]["core"]
    assert init["command"][-1] == config["simple_auth_manager_passwords_file"]
    passwords = tmp_path / "passwords.json"
    passwords.write_text(secret["stringData"]["passwords.json"])  # what the init container copies
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", config["simple_auth_manager_users"])
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    SimpleAuthManager().init()
    assert SimpleAuthManager.get_passwords() == {"admin": secret["stringData"]["admin-password"]}


@pytest.mark.parametrize("env", ENVS)
def test_worker_pods_and_the_bootstrap_job_run_the_airflow_chart_image(manifests, env):
    airflow = merged_values(env)["airflow"]["images"]["airflow"]
    expected = f"{airflow['repository']}:{airflow['tag']}"
    template = named(manifests[env], "ConfigMap", f"{RELEASE}-worker-pod-template")
    worker = yaml.safe_load(template["data"]["pod_template.yaml"])["spec"]["containers"][0]
    job = next(o for o in manifests[env] if o["kind"] == "Job" and o["metadata"]["name"].startswith(f"{RELEASE}-db-bootstrap"))
    assert worker["image"] == job["spec"]["template"]["spec"]["containers"][0]["image"] == expected
    assert worker["imagePullPolicy"] == airflow["pullPolicy"]
    scheduler = named(manifests[env], "Deployment", f"{RELEASE}-scheduler")["spec"]["template"]["spec"]
    assert next(c for c in scheduler["containers"] if c["name"] == "scheduler")["image"] == expected



def test_only_the_airflow_components_that_call_the_kubernetes_api_get_a_token(manifests):
    docs = manifests["local"]
    for account in ("kpi-airflow-dag-processor", "kpi-airflow-triggerer", "kpi-airflow-migrate-database-job"):
        assert named(docs, "ServiceAccount", account)["automountServiceAccountToken"] is False, account
    for account in ("kpi-airflow-scheduler", "kpi-airflow-api-server", "kpi-airflow-worker"):
        assert named(docs, "ServiceAccount", account).get("automountServiceAccountToken", True) is True, account
