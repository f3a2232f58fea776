"""churn_training: validate sources -> features + training (Spark) -> evaluate -> promote or skip.

Scheduled on the ``churn_sources`` and ``churn_drift`` assets (and triggerable by hand with params); emits
``churn_champion`` when the promotion moved the alias (which schedules ``churn_scoring``).
The Spark step follows ``KPI_SPARK_BACKEND``: ``local`` runs the job with spark-submit inside the task,
``kubernetes`` submits the packaged SparkApplication with ``SparkKubernetesOperator``. Wiring only; each
task is one call into ``kpi``.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from kpi.dags.assets import (
    CHURN_CHAMPION,
    CHURN_DEFAULT_ARGS,
    CHURN_DRIFT,
    CHURN_PROMOTIONS,
    CHURN_SOURCES,
    CHURN_START_DATE,
)


def _spark_backend() -> str:
    from kpi.settings import get_settings

    return get_settings().spark_backend


@dag(
    dag_id="churn_training",
    description="Train a churn model on the latest sources; promote it to champion only if it wins.",
    schedule=(CHURN_SOURCES | CHURN_DRIFT),
    start_date=CHURN_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=CHURN_DEFAULT_ARGS,
    tags=["churn", "training", "spark"],
    params={
        "data_url": Param(None, type=["null", "string"], description="Sources; default from the asset event."),
        "as_of": Param(None, type=["null", "string"], description="YYYY-MM-DD; default from the event or run."),
        "trials": Param(None, type=["null", "integer"], description="Search trials; default settings."),
    },
)
def churn_training():
    @task
    def resolve_inputs(*, params=None, dag_run=None, triggering_asset_events=None) -> dict:
        from kpi.churn.spark_submit import training_inputs
        from kpi.settings import get_settings

        events = [e for evs in (triggering_asset_events or {}).values() for e in evs]
        extras = [dict(e.extra or {}) for e in sorted(events, key=lambda e: e.timestamp)]
        return training_inputs(get_settings(), params, extras, dag_run.run_after.date())

    @task
    def validate_sources(run: dict) -> dict:
        from kpi.churn.validate import assert_valid_sources
        from kpi.settings import get_settings

        return {**run, "validation": _jsonable(assert_valid_sources(run["data_url"], get_settings()))}

    @task(outlets=[CHURN_PROMOTIONS])
    def evaluate_and_promote(result: dict, run: dict, *, outlet_events=None) -> dict:
        from kpi.churn.delivery import promotion_event
        from kpi.churn.registry import evaluate_and_promote as decide
        from kpi.settings import get_settings

        decision = decide(get_settings(), str(result["model_version"]))
        # the alias moved: churn_champion schedules churn_scoring, which rescores with the new champion
        event = promotion_event(decision, run)
        if event:
            outlet_events[CHURN_PROMOTIONS].add(CHURN_CHAMPION, extra=event)
        return {**decision, "training": result}

    run = resolve_inputs()
    validated = validate_sources(run)

    if _spark_backend() == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator

        from kpi.churn.spark_submit import render_spark_application
        from kpi.settings import get_settings

        settings = get_settings()
        inputs = "ti.xcom_pull(task_ids='validate_sources')"
        application = render_spark_application(
            settings, data_url="{{ " + inputs + "['data_url'] }}", as_of="{{ " + inputs + "['as_of'] }}",
            trials=None, name="churn-train",
        )
        spark_step = SparkKubernetesOperator(
            task_id="train",
            namespace=settings.spark_namespace,
            name="churn-train",
            template_spec={"spark": application},
            kubernetes_conn_id=settings.spark_kubernetes_conn_id,
            get_logs=True,
            delete_on_termination=True,
            retries=0,  # a retry would register a second model version
            execution_timeout=dt.timedelta(hours=2),
        )

        @task
        def collect_training_result(run: dict) -> dict:
            from kpi.churn.sources import data_version
            from kpi.churn.spark_submit import read_training_result
            from kpi.settings import get_settings

            settings = get_settings()
            return read_training_result(settings, run["as_of"], data_version(run["data_url"], settings))

        result = collect_training_result(validated)
        validated >> spark_step >> result
    else:

        @task(retries=0, execution_timeout=dt.timedelta(hours=2))
        def train(run: dict, *, params=None) -> dict:
            from kpi.churn.spark_submit import submit_training
            from kpi.settings import get_settings

            return submit_training(get_settings(), run["data_url"], dt.date.fromisoformat(run["as_of"]),
                                   trials=params.get("trials"))

        result = train(validated)

    evaluate_and_promote(result, validated)


def _jsonable(value):
    """Validation results may carry non-JSON values; XCom keeps only a summary."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    return value


churn_training()
