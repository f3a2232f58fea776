"""churn_scoring: the champion's scores of every user into ``prod.churn_scores``, daily and after each promotion.

Scheduled every day (as of the run's date) and on the ``churn_champion`` asset that ``churn_training`` emits
when a promotion moved the alias (then the latest delivered date is rescored with the new champion).
Idempotent per as-of date: a rerun changes nothing. Wiring only; the logic is
``kpi.churn.delivery.deliver_scores`` (the same scoring as ``kpi churn score``).
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from kpi.dags.assets import CHURN_CHAMPION, CHURN_DEFAULT_ARGS, CHURN_START_DATE


@dag(
    dag_id="churn_scoring",
    description="Score every user with the champion into prod.churn_scores (daily, and after each promotion).",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 4 * * *", timezone="UTC"),
                                 assets=CHURN_CHAMPION),
    start_date=CHURN_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=CHURN_DEFAULT_ARGS,
    tags=["churn", "scoring", "warehouse"],
    params={
        "data_url": Param(None, type=["null", "string"], description="Sources; default KPI_CHURN_DATA_URL."),
        "as_of": Param(None, type=["null", "string"], description="YYYY-MM-DD; default the run's date."),
        "rescore_latest": Param(False, type="boolean",
                                description="Rescore the latest delivered date, as after a promotion."),
    },
)
def churn_scoring():
    @task
    def deliver_scores(*, params=None, dag_run=None, triggering_asset_events=None) -> dict:
        import datetime as dt

        from kpi.churn.delivery import deliver_scores as deliver
        from kpi.churn.delivery import latest_delivered_as_of, scoring_inputs
        from kpi.settings import get_settings

        settings = get_settings()
        events = [e for evs in (triggering_asset_events or {}).values() for e in evs]
        extras = [dict(e.extra or {}) for e in sorted(events, key=lambda e: e.timestamp)]
        run = scoring_inputs(settings, params, extras, dag_run.run_after.date(), latest_delivered_as_of(settings))
        return deliver(settings, run["data_url"], dt.date.fromisoformat(run["as_of"]), trigger=run["trigger"],
                       run_id=dag_run.run_id)

    deliver_scores()


churn_scoring()
