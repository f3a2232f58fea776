"""Daily rolling refresh of the crypto events window [ds-4, ds]: stage -> validate -> quarantine -> publish -> report.

Wiring only: every task is one call into ``kpi.crypto.pipeline`` with the logical date and the run id;
kpi modules are imported inside the tasks so that parsing this file needs no database and no heavy import.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task

DEFAULT_ARGS = {
    "owner": "kpi-data",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
}


def _date(ds: str) -> dt.date:
    return dt.date.fromisoformat(ds)


def _start_date() -> dt.datetime:
    # KPI_CRYPTO_START_DATE, read when the file is parsed (kpi.settings needs only pydantic, already loaded)
    from kpi.settings import Settings

    day = Settings().crypto_start_date
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


@dag(
    dag_id="crypto_events",
    description="Validate-before-load of crypto purchases: GE in Postgres, quarantine, gated publish to prod",
    schedule="@daily",
    start_date=_start_date(),
    catchup=True,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["kpi", "crypto", "data-quality"],
    doc_md=__doc__,
)
def crypto_events():
    @task
    def stage(ds=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import stage_window

        return stage_window(_date(ds), run_id)

    @task
    def validate(ds=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import validate_window

        return validate_window(_date(ds), run_id)

    @task
    def quarantine(ds=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import quarantine_rows

        return quarantine_rows(_date(ds), run_id)

    @task
    def publish(ds=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import publish_window_or_fail

        return publish_window_or_fail(_date(ds), run_id)

    @task
    def report(ds=None, run_id=None) -> dict:
        from kpi.crypto.pipeline import report_run

        return report_run(_date(ds), run_id)

    stage() >> validate() >> quarantine() >> publish() >> report()


crypto_events()
