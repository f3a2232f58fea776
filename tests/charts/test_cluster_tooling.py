"""The user-facing cluster tooling: Taskfile tasks, kind config, the smoke workflow, the smoke script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from .platform import ROOT

CLUSTER_TASKS = ("cluster-up", "cluster-down", "images", "deploy", "ui", "smoke", "status")


def test_cluster_tasks_are_listed_with_a_description():
    task = Path(sys.executable).parent / "task"
    result = subprocess.run([str(task), "--list-all", "--json"], cwd=ROOT, capture_output=True, text=True, check=True)
    listed = {t["name"]: t["desc"] for t in json.loads(result.stdout)["tasks"]}
    for name in CLUSTER_TASKS:
        assert listed.get(name), f"task {name} is missing or has no desc"


def test_every_cluster_task_checks_its_tools_and_says_how_to_fix_them():
    tasks = yaml.safe_load((ROOT / "taskfiles" / "cluster.yml").read_text())["tasks"]
    for name in ("cluster-up", "cluster-down", "images", "deploy", "ui", "smoke", "status"):
        preconditions = tasks[name].get("preconditions", [])
        assert preconditions, name
        for check in preconditions:
            assert check["msg"] and ("install" in check["msg"] or "run" in check["msg"] or "raise" in check["msg"]
                                     or "missing" in check["msg"]), (name, check)
    # never the user's default context by surprise
    taskfile = yaml.safe_load((ROOT / "taskfiles" / "cluster.yml").read_text())
    assert taskfile["env"]["KUBECONFIG"] == "{{.KUBECONFIG_FILE}}"
    assert taskfile["vars"]["KUBECONFIG_FILE"].endswith("/.kpi/kubeconfig")
    up = "\n".join(str(c) for c in tasks["cluster-up"]["cmds"])
    for tool in ("docker", "kind", "helm", "kubectl", "MemTotal"):
        assert tool in "\n".join(p["sh"] for p in tasks["cluster-up"]["preconditions"]), tool
    assert "--kubeconfig" in up


def test_kind_config_pins_the_node_image():
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    images = [node["image"] for node in config["nodes"]]
    assert images and all(":v1." in image for image in images)
    assert config["name"] == "kpi"


def test_kind_smoke_workflow_passes_actionlint_and_runs_the_tasks():
    workflow = ROOT / ".github" / "workflows" / "kind-smoke.yml"
    actionlint = Path(sys.executable).parent / "actionlint"
    result = subprocess.run([str(actionlint), str(workflow)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = workflow.read_text()
    assert "task cluster-up" in text and "task smoke" in text


def test_smoke_runs_on_kind_by_default_and_on_the_local_platform_with_target_local():
    tasks = yaml.safe_load((ROOT / "taskfiles" / "cluster.yml").read_text())["tasks"]
    assert tasks["smoke"]["vars"]["TARGET"] == '{{.TARGET | default "kind"}}'
    assert "--target {{.TARGET}}" in tasks["smoke"]["cmds"][0]
    platform = yaml.safe_load((ROOT / "taskfiles" / "platform.yml").read_text())["tasks"]
    assert platform["platform-up"]["cmds"] == ["{{.ROOT_DIR}}/.venv/bin/kpi platform up {{.CLI_ARGS}}"]
    assert "kpi platform down" in platform["platform-down"]["cmds"][0]


def test_smoke_script_checks_the_five_promises():
    source = (ROOT / "scripts" / "smoke.py").read_text()
    for promise in ("prod.bt_crypto_events", "sparkapplications", "alias=champion", "drift-reports", "_stcore/health"):
        assert promise in source
    for dag in ("crypto_events", "churn_data_watchdog", "churn_training", "churn_drift_monitor"):
        assert f'"{dag}"' in source
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "smoke.py"), "--help"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "--namespace" in result.stdout


def test_deploy_lets_helm_run_the_migrations_hook_and_waits_for_the_pods_itself():
    """`helm upgrade --wait` would run the Airflow chart's post-install migrations hook only once every pod is
    ready, while the Airflow pods wait for those migrations: a deadlock until the timeout."""
    tasks = yaml.safe_load((ROOT / "taskfiles" / "cluster.yml").read_text())["tasks"]
    commands = [str(c) for c in tasks["deploy"]["cmds"]]
    upgrade = next(c for c in commands if "helm upgrade --install" in c)
    assert "--wait" not in upgrade and "--timeout" in upgrade
    assert any("kubectl" in c and "wait --for=condition=Ready" in c for c in commands[commands.index(upgrade):])
    values = yaml.safe_load((ROOT / "charts" / "kpi-platform" / "values.yaml").read_text())
    assert values["airflow"]["migrateDatabaseJob"]["useHelmHooks"] is True
