"""The packaged SparkApplication template: renders from settings and validates against the upstream CRD."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from tests.conftest import reference_file

AS_OF = dt.date(2024, 6, 30)


def _crd_schema() -> dict:
    path = reference_file("schemas", "sparkoperator.k8s.io_sparkapplications.yaml")
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta2")
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture()
def cluster_settings():
    from kpi.settings import Settings

    return Settings(env="dev", storage_url="s3://kpi/data", s3_endpoint_url="http://kpi-minio:9000",
                    mlflow_tracking_uri="http://kpi-mlflow:5000", spark_backend="kubernetes",
                    spark_namespace="kpi", spark_image="ghcr.io/example/kpi-spark:1.2.3")


def test_rendered_application_validates_against_the_crd_schema(cluster_settings):
    import jsonschema
    from kpi.churn.spark_submit import render_spark_application

    schema = _crd_schema()
    app = render_spark_application(cluster_settings, "s3://kpi/churn/sources", AS_OF, trials=6)
    jsonschema.validate(app, schema, cls=jsonschema.Draft7Validator)
    # the validator is not vacuous: a wrong enum value and a wrong type are refused
    broken = yaml.safe_load(yaml.safe_dump(app))
    broken["spec"]["type"] = "Go"
    broken["spec"]["driver"]["cores"] = "one"
    errors = sorted(e.message for e in jsonschema.Draft7Validator(schema).iter_errors(broken))
    assert len(errors) == 2 and any("'Go' is not one of" in e for e in errors)


def test_application_carries_image_job_arguments_and_secret_references(cluster_settings):
    from kpi.churn.spark_submit import render_spark_application

    app = render_spark_application(cluster_settings, "s3://kpi/churn/sources", AS_OF, trials=6)
    spec = app["spec"]
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and app["kind"] == "SparkApplication"
    assert app["metadata"] == {**app["metadata"], "name": "churn-train-2024-06-30", "namespace": "kpi"}
    assert spec["image"] == "ghcr.io/example/kpi-spark:1.2.3"
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    assert spec["mainApplicationFile"] == cluster_settings.spark_main_application_file
    assert spec["mainApplicationFile"].endswith("/kpi/churn/job.py")
    assert spec["arguments"] == ["--data", "s3://kpi/churn/sources", "--as-of", "2024-06-30", "--trials", "6"]
    assert spec["sparkConf"]["spark.hadoop.fs.s3a.endpoint"] == "http://kpi-minio:9000"
    for role in ("driver", "executor"):
        pod = spec[role]
        assert pod["serviceAccount"] == cluster_settings.spark_service_account
        env = {e["name"]: e for e in pod["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://kpi-mlflow:5000"
        assert env["KPI_STORAGE_URL"]["value"] == "s3://kpi/data"
        # secrets are referenced by name, never inlined
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == cluster_settings.spark_s3_secret
        assert env["KPI_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": cluster_settings.spark_database_secret, "key": "url"}
        assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["executor"]["instances"] == cluster_settings.spark_executor_instances


def test_airflow_expressions_survive_rendering_as_quoted_strings(cluster_settings):
    from kpi.churn.spark_submit import render_spark_application

    expr = "{{ ti.xcom_pull(task_ids='validate_sources')['as_of'] }}"
    app = render_spark_application(cluster_settings, "s3://kpi/x: y", expr, name="churn-train")
    assert app["spec"]["arguments"][:4] == ["--data", "s3://kpi/x: y", "--as-of", expr]
    assert app["metadata"]["name"] == "churn-train"


def test_local_backend_runs_the_same_entry_point_with_a_local_master():
    from kpi.churn.spark_submit import job_arguments, job_path, local_command
    from kpi.settings import Settings

    settings = Settings(spark_master="local[1]")
    cmd = local_command(settings, "/data/src", AS_OF, trials=3)
    assert cmd[0].endswith("spark-submit") and cmd[1:3] == ["--master", "local[1]"]
    assert cmd[-7:] == [str(job_path()), *job_arguments("/data/src", AS_OF, 3)]
    assert job_path().name == "job.py" and job_path().parent.name == "churn"


def test_run_inputs_prefer_params_then_the_newest_event_then_settings():
    from kpi.churn.spark_submit import training_inputs
    from kpi.settings import Settings

    settings = Settings(churn_data_url="s3://kpi/watched/")
    day = dt.date(2025, 3, 1)
    assert training_inputs(settings, {}, [], day) == {
        "data_url": "s3://kpi/watched", "as_of": "2025-03-01", "trigger": "schedule"}
    events = [{"data_url": "s3://old", "as_of": "2025-01-01"}, {"data_url": "s3://new", "as_of": "2025-02-01"}]
    assert training_inputs(settings, {"as_of": None}, events, day)["data_url"] == "s3://new"
    assert training_inputs(settings, {"as_of": "2025-02-15"}, events, day)["as_of"] == "2025-02-15"
    with pytest.raises(ValueError, match="as_of must be YYYY-MM-DD"):
        training_inputs(settings, {"as_of": "yesterday"}, [], day)


def test_a_failed_job_reports_its_own_error_first_and_a_short_log_tail():
    import json

    from kpi.churn.spark_submit import LOG_TAIL_CHARS, job_failure

    chatter = "\n".join(f"26/12/03 09:00:{i % 60:02d} INFO DAGScheduler: stage {i} finished" for i in range(400))
    stderr = chatter + "\n26/12/03 09:01:00 WARN TaskSetManager: Lost task 0.0\n" + chatter
    stdout = "training...\n" + json.dumps({"ok": False, "error_type": "ValueError",
                                           "error": "training set for as_of 2020-01-01 has 0 rows"})
    failure = job_failure(1, stdout, stderr)
    assert str(failure).startswith("ValueError: training set for as_of 2020-01-01 has 0 rows\n")
    assert failure.job_error_type == "ValueError" and failure.job_error.endswith("has 0 rows")
    assert "WARN TaskSetManager: Lost task 0.0" in failure.log_tail and " INFO " not in failure.log_tail
    assert len(failure.log_tail) <= LOG_TAIL_CHARS and len(str(failure)) < 2 * LOG_TAIL_CHARS
    # a job that died before printing its result: the last exception of its log is the error
    crashed = job_failure(1, "", chatter + "\nTraceback (most recent call last):\n  File x\nMemoryError: out of memory\n")
    assert str(crashed).startswith("MemoryError: out of memory\n")
    assert str(job_failure(137, "", chatter)).startswith("spark-submit exited with 137 and the job reported no error")


@pytest.mark.slow
def test_a_spark_error_is_described_by_its_java_exception_and_root_cause(spark, tmp_path):
    from kpi.churn.spark_submit import describe_job_error

    broken = tmp_path / "PAYMENTS.parquet"
    broken.write_bytes(b"this is not parquet")
    with pytest.raises(Exception) as caught:
        spark.read.parquet(str(broken)).count()
    error = describe_job_error(caught.value)
    assert error["error_type"] == "SparkException"
    assert "caused by RuntimeException:" in error["error"] and "PAYMENTS.parquet is not a Parquet file" in error["error"]
    assert "\tat " not in error["error"] and "at org.apache" not in error["error"]
