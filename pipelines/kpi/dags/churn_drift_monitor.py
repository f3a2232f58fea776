"""churn_drift_monitor: weekly (and on demand) drift of the latest sources against the champion.

Emits ``churn_drift`` (which schedules ``churn_training``) only when the drifted-feature share reaches
``KPI_CHURN_DRIFT_THRESHOLD``. Wiring only; the logic is ``kpi.churn.drift.run_drift``.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from kpi.dags.assets import CHURN_DEFAULT_ARGS, CHURN_DRIFT, CHURN_DRIFT_ALERTS, CHURN_START_DATE


@dag(
    dag_id="churn_drift_monitor",
    description="Evidently drift of the latest churn features vs the champion's training features.",
    schedule="@weekly",
    start_date=CHURN_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=CHURN_DEFAULT_ARGS,
    tags=["churn", "monitoring", "drift"],
    params={
        "data_url": Param(None, type=["null", "string"], description="Sources; default KPI_CHURN_DATA_URL."),
        "as_of": Param(None, type=["null", "string"], description="YYYY-MM-DD; default the run's date."),
    },
)
def churn_drift_monitor():
    @task(outlets=[CHURN_DRIFT_ALERTS])
    def measure_drift(*, params=None, dag_run=None, outlet_events=None) -> dict:
        import datetime as dt

        from airflow.sdk.exceptions import AirflowSkipException

        from kpi.churn.drift import NoChampionError, run_drift
        from kpi.churn.spark_submit import training_inputs
        from kpi.settings import get_settings

        settings = get_settings()
        run = training_inputs(settings, params, [], dag_run.run_after.date())
        try:
            result = run_drift(settings, run["data_url"], dt.date.fromisoformat(run["as_of"]),
                               engine=settings.churn_drift_engine)
        except NoChampionError as exc:
            raise AirflowSkipException(str(exc)) from None
        if result["drift_detected"]:
            outlet_events[CHURN_DRIFT_ALERTS].add(CHURN_DRIFT, extra={
                "data_url": run["data_url"], "as_of": run["as_of"], "drift_share": result["drift_share"],
                "report_url": result["report_url"],
            })
        return result

    measure_drift()


churn_drift_monitor()
