"""churn_data_watchdog: emit ``churn_sources`` only when a churn source file's content changed.

Wiring only; the logic is ``kpi.churn.watchdog`` (fingerprints against ``watchdog/state.json`` in storage,
recorded with a compare-and-swap so that concurrent runs announce one change once).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from kpi.dags.assets import CHURN_DEFAULT_ARGS, CHURN_SOURCES, CHURN_SOURCES_CHANGES, CHURN_START_DATE


@dag(
    dag_id="churn_data_watchdog",
    description="Fingerprint the churn sources; emit churn_sources when one changed.",
    schedule="*/15 * * * *",
    start_date=CHURN_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=CHURN_DEFAULT_ARGS,
    tags=["churn", "watchdog", "assets"],
    params={
        "data_url": Param(None, type=["null", "string"], description="Sources to watch; default KPI_CHURN_DATA_URL."),
        "as_of": Param(None, type=["null", "string"], description="as_of passed to training; default run date."),
    },
)
def churn_data_watchdog():
    @task(outlets=[CHURN_SOURCES_CHANGES])
    def detect_source_changes(*, params=None, dag_run=None, outlet_events=None) -> dict:
        from kpi.churn.watchdog import watch
        from kpi.settings import get_settings

        # Recorded first, with a compare-and-swap: of two runs seeing one change, only the one whose record
        # held announces it. A retry of this run after a failure announces it again (claimed_by).
        check = watch(get_settings(), params.get("data_url"), claimed_by=dag_run.run_id)
        if check["changed"]:
            as_of = params.get("as_of") or dag_run.run_after.date().isoformat()
            outlet_events[CHURN_SOURCES_CHANGES].add(CHURN_SOURCES, extra={
                "data_url": check["data_url"], "data_version": check["data_version"],
                "changed_files": check["changed_files"], "as_of": as_of,
            })
        return check

    detect_source_changes()


churn_data_watchdog()
