"""The platform fits the machine the kind smoke test runs on (a public GitHub ubuntu-24.04 runner: 4 vCPU,
16 GiB): requests at the churn training peak, kube-system included, from the full render."""

from __future__ import annotations

import yaml

from .platform import ROOT, load_values

# what a GitHub ubuntu-24.04 runner's Docker reports as MemTotal (16 GiB less the kernel's share)
RUNNER_DOCKER_MEMORY_GIB = 15.6


def test_the_training_peak_fits_a_github_runner(umbrella):
    from kpi.platform.footprint import RUNNER_LIMITS, footprint

    result = footprint(umbrella, "local")
    peak = result["training_peak_with_kube_system"]
    print(f"footprint: idle {result['platform_idle']}, peak {peak}")
    assert peak["cpu"] <= RUNNER_LIMITS["cpu"] == 3.5
    assert peak["memory_gib"] <= RUNNER_LIMITS["memory_gib"] == 12.0
    assert result["fits_runner"] is True
    # the peak really holds the training pods and kube-system
    components = {row["component"] for row in result["components"]}
    assert {"spark driver", "spark executor", "airflow worker pod (train task)", "kube-system etcd"} <= components


def test_three_executors_would_not_fit_and_the_check_says_so(umbrella, monkeypatch):
    from kpi.platform import footprint as module

    values = load_values("local")
    values["global"]["platform"]["sparkExecutorInstances"] = 3
    values["global"]["platform"]["sparkExecutorCoresRequest"] = "1"
    monkeypatch.setattr(module, "load_values", lambda env: values)
    result = module.footprint(umbrella, "local")
    assert result["fits_runner"] is False and result["training_peak_with_kube_system"]["cpu"] > 3.5


def test_cluster_up_asks_docker_for_the_memory_the_peak_needs_and_a_runner_has(umbrella):
    from kpi.platform.footprint import footprint

    cluster = yaml.safe_load((ROOT / "taskfiles" / "cluster.yml").read_text())
    required = cluster["vars"]["DOCKER_MIN_MEMORY_GIB"]
    check = "\n".join(p["sh"] for p in cluster["tasks"]["cluster-up"]["preconditions"])
    assert "{{.DOCKER_MIN_MEMORY_GIB}}" in check and "MemTotal" in check
    peak = footprint(umbrella, "local")["training_peak_with_kube_system"]["memory_gib"]
    assert peak + 1 <= required <= RUNNER_DOCKER_MEMORY_GIB
