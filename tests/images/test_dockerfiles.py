"""The images: hadolint clean, pinned non-root bases, Python pins taken from requirements/lock.txt."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
NAMES = ("airflow", "spark", "mlflow", "dashboard", "jupyterlab")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def _requirements(name: str) -> dict[str, str]:
    pins = {}
    for line in (IMAGES / name / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, _, version = line.partition("==")
            assert version, f"images/{name}/requirements.txt: {line} is not pinned"
            pins[package.lower().replace("_", "-")] = version
    return pins


def _from_lines(name: str) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", (IMAGES / name / "Dockerfile").read_text(), flags=re.MULTILINE)


def test_every_image_has_a_dockerfile_and_a_dockerignore():
    assert sorted(p.parent.name for p in IMAGES.glob("*/Dockerfile")) == sorted(NAMES)
    for name in NAMES:
        ignore = (IMAGES / name / "Dockerfile.dockerignore").read_text().splitlines()
        assert ignore[1] == "*" or "*" in ignore, name  # everything out, then only what the image copies


@pytest.mark.parametrize("name", NAMES)
def test_hadolint_is_clean(name):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(IMAGES / name / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_python_pins_inside_the_image_come_from_the_lock(name):
    lock = _lock()
    pins = _requirements(name)
    assert len(pins) > 20
    drift = {p: (v, lock.get(p)) for p, v in pins.items() if lock.get(p) != v}
    assert drift == {}, f"images/{name}/requirements.txt differs from requirements/lock.txt (task images-requirements)"


def test_each_image_carries_the_packages_of_its_role():
    lock = _lock()
    assert _requirements("airflow")["apache-airflow"] == lock["apache-airflow"]
    assert "apache-airflow-providers-cncf-kubernetes" in _requirements("airflow")
    assert "apache-airflow-providers-amazon" in _requirements("airflow")  # remote task logs to MinIO
    assert {"mlflow", "psycopg2-binary", "boto3"} <= set(_requirements("mlflow"))
    assert "streamlit" in _requirements("dashboard")
    assert {"jupyterlab", "ipykernel", "mlflow", "shap", "psycopg"} <= set(_requirements("jupyterlab"))
    assert "hyperopt" in _requirements("spark")
    # the Spark distribution of the base image provides pyspark: no second copy from PyPI
    assert "pyspark" not in _requirements("spark")


@pytest.mark.parametrize("name", NAMES)
def test_bases_are_pinned_and_the_image_runs_as_non_root(name):
    text = (IMAGES / name / "Dockerfile").read_text()
    for image in _from_lines(name):
        assert ":" in image and not image.endswith(":latest"), image
        assert re.search(r":\d+\.\d+", image), f"{image}: pin a release tag"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in ("0", "root"), f"{name}: the last USER must be non-root"
    assert not re.search(r"(?i)(password|secret|token)\s*=", text), f"{name}: no secrets in images"


def test_base_versions_match_the_lock_and_the_chart():
    lock = _lock()
    airflow_tag = _from_lines("airflow")[0].split(":")[1]
    assert airflow_tag.startswith(lock["apache-airflow"] + "-python3.11")
    spark_tag = next(i for i in _from_lines("spark") if i.startswith("apache/spark:")).split(":")[1]
    spark_version = spark_tag.split("-")[0]
    # same Spark minor as the pyspark the project is tested with (patch releases of the image lag PyPI)
    assert spark_version.rsplit(".", 1)[0] == lock["pyspark"].rsplit(".", 1)[0]
    values = yaml.safe_load((ROOT / "charts" / "kpi-platform" / "values.yaml").read_text())
    assert values["global"]["platform"]["sparkVersion"] == spark_version
    mlflow_chart = yaml.safe_load((ROOT / "charts" / "mlflow" / "Chart.yaml").read_text())
    assert mlflow_chart["appVersion"] == lock["mlflow"]


def test_the_spark_image_holds_the_job_the_spark_application_runs():
    text = (IMAGES / "spark" / "Dockerfile").read_text()
    assert "COPY pipelines /opt/kpi/pipelines" in text  # -> /opt/kpi/pipelines/kpi/churn/job.py
    values = (ROOT / "charts" / "kpi-platform" / "templates" / "configmap-settings.yaml").read_text()
    assert "local:///opt/kpi/pipelines/kpi/churn/job.py" in values
    # hadoop-aws must match the Hadoop bundled with Spark: the build checks it, and the checksum of each jar
    assert 'hadoop-client-api-${HADOOP_VERSION}.jar' in text and "sha1sum -c" in text


@pytest.mark.parametrize("name", NAMES)
def test_every_copied_path_exists_and_is_let_through_the_dockerignore(name):
    text = (IMAGES / name / "Dockerfile").read_text()
    ignore = (IMAGES / name / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, flags=re.MULTILINE):
        sources = [s for s in line.split()[:-1] if not s.startswith("--")]
        for source in sources:
            # README.md is composed by the coordinator; `task images` checks it before building
            if source != "README.md":
                assert (ROOT / source).exists(), f"images/{name}: COPY {source} does not exist"
            assert any(source == a or source.startswith(a + "/") for a in allowed), (
                f"images/{name}: {source} is excluded by Dockerfile.dockerignore")


def test_the_dashboard_image_runs_the_dashboard_app():
    text = (IMAGES / "dashboard" / "Dockerfile").read_text()
    entry = re.search(r'^ENTRYPOINT \["streamlit", "run", "/opt/kpi/(.+?)"\]', text, flags=re.MULTILINE).group(1)
    assert (ROOT / entry).exists()


def test_hadoop_aws_matches_the_hadoop_that_spark_bundles():
    """The locked pyspark carries the same Spark 4.0 jars as the image: its hadoop-client-api names the
    Hadoop that hadoop-aws must equal (the image build checks its own Spark again)."""
    pyspark = pytest.importorskip("pyspark")
    jars = Path(pyspark.__file__).parent / "jars"
    bundled = {re.match(r"hadoop-client-api-(.+)\.jar", p.name).group(1) for p in jars.glob("hadoop-client-api-*.jar")}
    declared = re.search(r"^ARG HADOOP_VERSION=(\S+)", (IMAGES / "spark" / "Dockerfile").read_text(), flags=re.MULTILINE).group(1)
    assert bundled == {declared}


def test_the_jupyterlab_image_ships_the_notebooks_and_takes_its_token_from_the_environment():
    text = (IMAGES / "jupyterlab" / "Dockerfile").read_text()
    assert "COPY --chown=10001:10001 notebooks /home/kpi/notebooks" in text
    assert 'ENTRYPOINT ["jupyter", "lab"]' in text and "--no-browser" in text
    assert "token" not in text.split("ENTRYPOINT")[1].lower()  # JUPYTER_TOKEN comes from a Secret
