"""Which days a run covers: the window [D-(n-1), D] and the day D a scheduled run processes.

Pure date arithmetic (no database, no Airflow): the DAG, the CLI and the tests share it.
"""

from __future__ import annotations

import datetime as dt
import uuid

from kpi.settings import Settings, get_settings


def window_bounds(day: dt.date, settings: Settings | None = None) -> tuple[dt.date, dt.date]:
    """The window [D-(n-1), D] ending on ``day`` (never on the wall clock)."""
    settings = settings or get_settings()
    return day - dt.timedelta(days=settings.crypto_window_days - 1), day


def last_complete_day(data_interval_end: dt.datetime) -> dt.date:
    """The last UTC day complete at ``data_interval_end``: the day D a DAG run processes.

    The crypto_events timetable fires at 00:00 UTC of D+1 with the data interval [D, D+1): D is the day
    before the interval's end. A manual run (data interval ending at the trigger time) processes the last
    day complete when it was triggered, never a day whose extract may still be coming.
    """
    end = data_interval_end.astimezone(dt.UTC)
    return (end - dt.timedelta(days=1)).date()


def new_run_id(day: dt.date) -> str:
    """A run id for runs started outside Airflow."""
    return f"manual__{day.isoformat()}__{uuid.uuid4().hex[:8]}"
