"""Daily refresh of the crypto events window [D-4, D], D the last complete day: landing -> stage ->
(validate, quarantine) -> publish -> report.

Schedule: ``CronDataIntervalTimetable("0 0 * * *", UTC)``, one run per UTC day. The run of day D has the
data interval [D, D+1) and the logical date D, fires at 00:00 UTC of D+1, and processes the window ending
on D, the day that just ended (``kpi.crypto.window.run_day``: the last day complete at the interval's end).
A manual run with logical date T gets the last whole day before T as its interval and processes that day:
to process day D, trigger it for D+1 00:00 UTC (or pass the interval D/D+1, which is the scheduled run of
D). A manual run without a logical date (no data interval) processes the last day complete at its
run_after. ``start_date`` is ``KPI_CRYPTO_START_DATE`` (00:00 UTC): the first run is that day's, fired the
day after. (A ``CronTriggerTimetable`` with a one-day interval dates its runs the same way, but its
start_date bounds the fire time: the first run's logical date fell a day before the start_date, and
Airflow creates no task instance of a task whose start_date is after the run's logical date: that run
"succeeded" with nothing done.)

``ingest_landing`` first ingests every new file under ``<KPI_STORAGE_URL>/landing/crypto/`` (then the
window sees it); ``landing_check`` fails the run, after the window was processed with the good files,
when a file had to be set aside. Wiring only: every task is one call into ``kpi.crypto``; kpi modules are
imported inside the tasks so that parsing this file needs no database and no heavy import.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, dag, task


def _record_failure(context) -> None:
    # a task killed or timed out never reached its step's own error handling: its run still gets marked failed
    from kpi.crypto.pipeline import record_task_failure

    record_task_failure(context)


DEFAULT_ARGS = {
    "owner": "kpi-data",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "on_failure_callback": _record_failure,
}
# one data interval per UTC day, [D, D+1): its run fires when it ends, at 00:00 UTC of D+1
SCHEDULE = CronDataIntervalTimetable("0 0 * * *", timezone="UTC")


def _start_date() -> dt.datetime:
    # 00:00 UTC of KPI_CRYPTO_START_DATE, read when the file is parsed (kpi.settings needs only pydantic): the
    # first data interval, whose run fires the day after
    from kpi.settings import Settings

    day = Settings().crypto_start_date
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


@dag(
    dag_id="crypto_events",
    description="Validate-before-load of crypto purchases: landing, GE in Postgres, quarantine, gated publish",
    schedule=SCHEDULE,
    start_date=_start_date(),
    catchup=True,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["kpi", "crypto", "data-quality"],
    doc_md=__doc__,
)
def crypto_events():
    @task
    def ingest_landing() -> dict:
        from kpi.crypto.landing import ingest_landing

        return ingest_landing()

    @task(retries=0)
    def landing_check(landing: dict) -> dict:
        from kpi.crypto.pipeline import check_landing_or_fail

        return check_landing_or_fail(landing)

    @task
    def stage(data_interval_end=None, dag_run=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import run_dag_step

        return run_dag_step("stage", run_id, data_interval_end, dag_run.run_after)

    @task
    def validate(data_interval_end=None, dag_run=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import run_dag_step

        return run_dag_step("validate", run_id, data_interval_end, dag_run.run_after)

    @task
    def quarantine(data_interval_end=None, dag_run=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import run_dag_step

        return run_dag_step("quarantine", run_id, data_interval_end, dag_run.run_after)

    @task
    def publish(data_interval_end=None, dag_run=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import run_dag_step

        return run_dag_step("publish", run_id, data_interval_end, dag_run.run_after)

    @task
    def report(data_interval_end=None, dag_run=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import run_dag_step

        return run_dag_step("report", run_id, data_interval_end, dag_run.run_after)

    landing = ingest_landing()
    landing_check(landing)
    staged = stage()
    published = publish()
    # validation and quarantine both read the staged rows and nothing else: they run side by side, and the
    # publish refuses a run unless both have recorded their outcome
    landing >> staged >> [validate(), quarantine()] >> published >> report()


crypto_events()
