"""What the platform asks of a cluster: the sum of resource requests, idle and at the churn training peak.

Everything comes from the full render of the umbrella (real upstream charts included): long-running pods
are the Deployments and StatefulSets, each pod counted as Kubernetes schedules it (the larger of its
containers' sum and its biggest init container). The training peak adds one Airflow worker pod (from the
worker pod template) and the Spark driver and executors of the SparkApplication that
``kpi.churn.spark_submit`` renders from the chart's settings ConfigMap (pod CPU = ``coreRequest``, pod
memory = ``memory`` + ``memoryOverhead``). A kind node also runs kube-system, counted from kind's own
manifests for Kubernetes 1.33 (``KIND_SYSTEM``). Jobs finish before the platform is idle and are left out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from pathlib import Path

import yaml

from kpi.platform.chart import RELEASE, load_values, named, objects, pod_specs, render

GIB = 1024**3
UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 1000, "M": 1000**2, "G": 1000**3, "": 1}
# requests of a kind v0.29 node's kube-system pods (kubeadm static pods, CoreDNS x2, kindnet); kube-proxy and
# local-path-provisioner request nothing
KIND_SYSTEM = [
    {"component": "kube-system etcd", "cpu": 0.1, "memory": 100 * 1024**2},
    {"component": "kube-system kube-apiserver", "cpu": 0.25, "memory": 0},
    {"component": "kube-system kube-controller-manager", "cpu": 0.2, "memory": 0},
    {"component": "kube-system kube-scheduler", "cpu": 0.1, "memory": 0},
    {"component": "kube-system coredns (x2)", "cpu": 0.2, "memory": 140 * 1024**2},
    {"component": "kube-system kindnet", "cpu": 0.1, "memory": 50 * 1024**2},
]
# a public GitHub ubuntu-24.04 runner (4 vCPU, 16 GiB) must schedule the training peak, with room to spare
RUNNER_LIMITS = {"cpu": 3.5, "memory_gib": 12.0}


def cpu(value: str | float) -> float:
    """Kubernetes CPU quantity -> cores."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory(value: str | int) -> int:
    """Kubernetes memory quantity -> bytes."""
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]i?|k)?", str(value)).groups()
    return int(float(number) * UNITS[unit or ""])


def spark_memory(value: str) -> int:
    """Spark size (1g, 512m) -> bytes."""
    number, unit = re.fullmatch(r"(\d+)([kmgt]?)b?", value.lower()).groups()
    return int(number) * {"": 1024**2, "k": 1024, "m": 1024**2, "g": GIB, "t": 1024**4}[unit]


def _requests(container: dict) -> tuple[float, int]:
    req = container.get("resources", {}).get("requests", {})
    return cpu(req.get("cpu", 0)), memory(req.get("memory", 0))


def pod_requests(spec: dict) -> tuple[float, int]:
    """What the scheduler reserves for a pod: max(sum of containers, largest init container), per resource."""
    main = [_requests(c) for c in spec.get("containers", [])]
    init = [_requests(c) for c in spec.get("initContainers", [])]
    return (max(sum(c for c, _ in main), max((c for c, _ in init), default=0.0)),
            max(sum(m for _, m in main), max((m for _, m in init), default=0)))


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("KPI_") or k == "MLFLOW_TRACKING_URI"]:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def spark_pods(docs: list[dict]) -> list[dict]:
    """Driver and executor pods of the churn SparkApplication rendered with the chart's settings."""
    from kpi.churn.spark_submit import render_spark_application
    from kpi.settings import Settings

    with _environment(named(docs, "ConfigMap", f"{RELEASE}-settings")["data"]):
        settings = Settings()
    app = render_spark_application(settings, settings.churn_data_url or "s3://kpi/churn/sources", dt.date(2026, 1, 1))
    pods = []
    for role in ("driver", "executor"):
        spec = app["spec"][role]
        pods.append({"component": f"spark {role}", "replicas": spec.get("instances", 1),
                     "cpu": cpu(spec["coreRequest"]),
                     "memory": spark_memory(spec["memory"]) + spark_memory(spec["memoryOverhead"])})
    return pods


def footprint(chart_dir: Path, env: str) -> dict:
    """Requested CPU and memory of ``values-<env>.yaml`` idle and at the training peak, per component."""
    docs = objects(render(chart_dir, load_values(env)))
    platform = []
    for obj in docs:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            c, m = pod_requests(pod_specs(obj)[0])
            platform.append({"component": obj["metadata"]["name"], "replicas": obj["spec"].get("replicas", 1),
                             "cpu": c, "memory": m})
    template = yaml.safe_load(named(docs, "ConfigMap", f"{RELEASE}-worker-pod-template")["data"]["pod_template.yaml"])
    w_cpu, w_mem = pod_requests(template["spec"])
    training = [{"component": "airflow worker pod (train task)", "replicas": 1, "cpu": w_cpu, "memory": w_mem},
                *spark_pods(docs)]
    system = [{**row, "replicas": 1} for row in KIND_SYSTEM]

    def total(rows: list[dict]) -> dict:
        return {"cpu": round(sum(r["cpu"] * r["replicas"] for r in rows), 3),
                "memory_gib": round(sum(r["memory"] * r["replicas"] for r in rows) / GIB, 3)}

    peak = total(system + platform + training)
    return {
        "values": f"values-{env}.yaml",
        "platform_idle": total(platform),
        "kube_system": total(system),
        "training_extra": total(training),
        "training_peak_with_kube_system": peak,
        "runner_limits": RUNNER_LIMITS,
        "fits_runner": peak["cpu"] <= RUNNER_LIMITS["cpu"] and peak["memory_gib"] <= RUNNER_LIMITS["memory_gib"],
        "components": [{**{k: v for k, v in r.items() if k != "memory"}, "memory_mib": round(r["memory"] / 1024**2),
                        "phase": phase}
                       for phase, rows in (("kube-system", system), ("idle", platform), ("training", training))
                       for r in rows],
    }
