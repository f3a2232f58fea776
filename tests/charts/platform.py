"""Helpers of the chart tests: assemble the umbrella with its first-party subcharts and render it with
the real Helm engine (helm-python-sdk), upstream dependencies disabled (they cannot be downloaded here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
UMBRELLA = CHARTS / "kpi-platform"
FIRST_PARTY = ("postgres", "minio", "mlflow", "dashboard")
UPSTREAM = ("airflow", "spark-operator")
RELEASE, NAMESPACE = "kpi", "kpi"
# the Kubernetes version whose schemas every object must satisfy (kind node image in kind-config.yaml)
KUBE_VERSION = "1.33.0"
ENVIRONMENTS = {"local": ROOT / "values-local.yaml", "prod-example": ROOT / "values-prod-example.yaml"}
# objects the upstream charts create, by the names our templates and values refer to them
UPSTREAM_OBJECTS = {
    ("ConfigMap", f"{RELEASE}-config"): "airflow (airflow.cfg of the release)",
    ("Service", f"{RELEASE}-api-server"): "airflow (API server)",
}


def assemble(dest: Path) -> Path:
    """Copy the umbrella into ``dest`` with the first-party charts under charts/ (what
    `helm dependency build` does for file:// dependencies); returns the umbrella's path."""
    import helm_python

    helm_python.disable_logging()
    target = dest / "kpi-platform"
    shutil.copytree(UMBRELLA, target, symlinks=False)
    (target / "charts").mkdir(exist_ok=True)
    for name in FIRST_PARTY:
        shutil.copytree(CHARTS / name, target / "charts" / name, symlinks=False)
    return target


def load_values(env: str) -> dict:
    """Values of one environment file with the upstream dependencies switched off."""
    values = yaml.safe_load(ENVIRONMENTS[env].read_text()) or {}
    for name in UPSTREAM:
        values.setdefault(name, {})["enabled"] = False
    return values


def render(chart_dir: Path, values: dict, name: str = RELEASE) -> dict[str, str]:
    """Template path -> rendered text, with Helm's own engine (as `helm template` would)."""
    import helm_python

    chart = helm_python.Chart.load(chart_dir)
    return chart.render(values, name=name, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object of a render (NOTES.txt left out)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def pod_specs(obj: dict) -> list[dict]:
    """The pod spec(s) of a workload object (Deployment, StatefulSet, Job, Pod)."""
    kind = obj["kind"]
    if kind == "Pod":
        return [obj["spec"]]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [obj["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []
