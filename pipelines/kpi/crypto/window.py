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


def run_day(data_interval_end: dt.datetime | None, run_after: dt.datetime | None = None) -> dt.date:
    """The day D a ``crypto_events`` run processes: :func:`last_complete_day` at the end of its data interval.

    A run triggered without a logical date (allowed by Airflow 3's UI and REST API) has no data interval:
    it is anchored on the time it was triggered for (``run_after``), so it processes the last day complete
    then, as a run triggered with that time as its logical date would.

    Raises:
        ValueError: neither time is known.
    """
    anchor = data_interval_end or run_after
    if anchor is None:
        raise ValueError("a crypto_events run needs its data interval's end or its run_after to know which day"
                         " it processes; neither was given")
    return last_complete_day(anchor)


def new_run_id(day: dt.date) -> str:
    """A run id for runs started outside Airflow."""
    return f"manual__{day.isoformat()}__{uuid.uuid4().hex[:8]}"
