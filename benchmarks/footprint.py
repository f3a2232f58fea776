"""Footprint of the platform on kind: the sum of resource requests of values-local.yaml, idle and while a
churn training SparkApplication runs. Prints a table and writes benchmarks/results/footprint.json.

First-party objects come from the real Helm render of the umbrella (Deployments and StatefulSets; Jobs run
to completion and are not part of the idle figure). The upstream charts cannot be rendered here, so their
long-running components are counted from the requests our values give them (every one is set explicitly).
The Spark job's own pods are sized like the Spark operator sizes them: memory + overhead, where the
overhead of a Python application is max(384 MiB, 0.4 x memory) (Spark's non-JVM default on Kubernetes).

Run: .venv/bin/python benchmarks/footprint.py
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.charts.platform import assemble, load_values, objects, pod_specs, render

GIB = 1024**3
TARGET_IDLE = {"cpu": 4.0, "memory_gib": 6.0}
TARGET_PEAK_WITHOUT_SPARK_GIB = 6.0
UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1000, "M": 1000**2, "G": 1000**3, "": 1}


def cpu(value: str | float) -> float:
    """Kubernetes CPU quantity -> cores."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory(value: str | int) -> int:
    """Kubernetes memory quantity -> bytes."""
    number, unit = re.fullmatch(r"([\d.]+)([KMG]i?|k)?", str(value)).groups()
    return int(float(number) * UNITS[unit or ""])


def spark_memory(value: str) -> int:
    """Spark memory string (1g, 512m) -> bytes."""
    number, unit = re.fullmatch(r"(\d+)([kmgt]?)", value.lower()).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": GIB, "t": 1024**4}[unit]


def requests(resources: dict) -> tuple[float, int]:
    req = resources.get("requests", {})
    return cpu(req.get("cpu", 0)), memory(req.get("memory", 0))


def first_party_components(values: dict) -> list[dict]:
    """Long-running first-party pods from the Helm render: name, replicas, cpu, memory (per replica)."""
    with tempfile.TemporaryDirectory() as folder:
        docs = objects(render(assemble(Path(folder)), values))
    rows = []
    for obj in docs:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for spec in pod_specs(obj):
            c, m = map(sum, zip(*(requests(x.get("resources", {})) for x in spec["containers"])))
            rows.append({"component": obj["metadata"]["name"], "source": "rendered",
                         "replicas": obj["spec"].get("replicas", 1), "cpu": c, "memory": m})
    return rows


def upstream_components(merged: dict) -> list[dict]:
    """Long-running pods of the upstream charts, from the requests set in our values."""
    airflow, operator = merged["airflow"], merged["spark-operator"]
    rows = []
    for key in ("scheduler", "apiServer", "dagProcessor", "triggerer"):
        c, m = requests(airflow[key]["resources"])
        if "logGroomerSidecar" in airflow[key]:
            gc, gm = requests(airflow[key]["logGroomerSidecar"]["resources"])
            c, m = c + gc, m + gm
        rows.append({"component": f"airflow {key}", "source": "values (upstream chart)",
                     "replicas": airflow[key].get("replicas", 1), "cpu": c, "memory": m})
    for key in ("controller", "webhook"):
        c, m = requests(operator[key]["resources"])
        rows.append({"component": f"spark-operator {key}", "source": "values (upstream chart)",
                     "replicas": operator[key].get("replicas", 1), "cpu": c, "memory": m})
    return rows


def merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def main() -> dict:
    defaults = yaml.safe_load((ROOT / "charts" / "kpi-platform" / "values.yaml").read_text())
    local = yaml.safe_load((ROOT / "values-local.yaml").read_text())
    merged = merge(defaults, local)
    idle_rows = first_party_components(load_values("local")) + upstream_components(merged)

    def total(rows):
        return sum(r["cpu"] * r["replicas"] for r in rows), sum(r["memory"] * r["replicas"] for r in rows)

    idle_cpu, idle_mem = total(idle_rows)
    # while training: one Airflow worker pod runs the SparkKubernetesOperator task and waits for the job
    w_cpu, w_mem = requests(merged["airflowWorker"]["resources"])
    platform = merged["global"]["platform"]
    spark_pods = []
    for role, mem, count in (("driver", platform["sparkDriverMemory"], 1),
                             ("executor", platform["sparkExecutorMemory"], platform["sparkExecutorInstances"])):
        heap = spark_memory(mem)
        pod_memory = heap + max(384 * 1024**2, int(0.4 * heap))
        spark_pods.append({"role": role, "count": count, "cpu": 1.0, "memory": pod_memory})
    spark_cpu = sum(p["cpu"] * p["count"] for p in spark_pods)
    spark_mem = sum(p["memory"] * p["count"] for p in spark_pods)
    peak_cpu, peak_mem = idle_cpu + w_cpu, idle_mem + w_mem
    result = {
        "values": "values-local.yaml",
        "idle": {"cpu": round(idle_cpu, 3), "memory_gib": round(idle_mem / GIB, 3)},
        "peak_without_spark": {"cpu": round(peak_cpu, 3), "memory_gib": round(peak_mem / GIB, 3)},
        "spark_job": {"cpu": spark_cpu, "memory_gib": round(spark_mem / GIB, 3), "pods": [
            {**p, "memory_gib": round(p["memory"] / GIB, 3)} for p in spark_pods]},
        "peak_total": {"cpu": round(peak_cpu + spark_cpu, 3), "memory_gib": round((peak_mem + spark_mem) / GIB, 3)},
        "targets": {"idle": TARGET_IDLE, "peak_without_spark_memory_gib": TARGET_PEAK_WITHOUT_SPARK_GIB},
        "within_targets": idle_cpu <= TARGET_IDLE["cpu"] and idle_mem / GIB <= TARGET_IDLE["memory_gib"]
        and peak_mem / GIB <= TARGET_PEAK_WITHOUT_SPARK_GIB,
        "components": [{**r, "memory_mib": round(r["memory"] / 1024**2)} for r in idle_rows],
    }
    for row in result["components"]:
        del row["memory"]
    for pod in result["spark_job"]["pods"]:
        del pod["memory"]
    print(f"{'component':32} {'source':24} {'replicas':>8} {'cpu':>6} {'MiB':>6}")
    for row in result["components"]:
        print(f"{row['component']:32} {row['source']:24} {row['replicas']:>8} {row['cpu']:>6.2f} {row['memory_mib']:>6}")
    print(f"idle:                {result['idle']['cpu']:.2f} CPU  {result['idle']['memory_gib']:.2f} GiB "
          f"(target <= {TARGET_IDLE['cpu']} CPU, {TARGET_IDLE['memory_gib']} GiB)")
    print(f"peak without Spark:  {result['peak_without_spark']['cpu']:.2f} CPU  "
          f"{result['peak_without_spark']['memory_gib']:.2f} GiB (target <= {TARGET_PEAK_WITHOUT_SPARK_GIB} GiB)")
    print(f"Spark job's own:     {spark_cpu:.2f} CPU  {result['spark_job']['memory_gib']:.2f} GiB")
    print(f"peak total:          {result['peak_total']['cpu']:.2f} CPU  {result['peak_total']['memory_gib']:.2f} GiB")
    out = ROOT / "benchmarks" / "results" / "footprint.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["within_targets"] else 1)
