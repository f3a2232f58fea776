"""Run orchestration: ``kpi crypto run`` (every step in one process) and the DAG's helpers around the steps.

:func:`run_window` holds the pipeline's lock at session level for the whole run and overlaps the two
CPU-bound halves: GE's validation on a thread of its own while its connection quarantines, gates and
writes the publish in one transaction that commits only after the validation passed and agreed. The DAG
runs the same steps (:mod:`kpi.crypto.steps`) one task after the other instead; its tasks call the
``*_or_fail`` helpers here, which turn failures that a retry cannot fix into failures without retries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time

import psycopg

from kpi.crypto.runs import CRYPTO_LOCK, lock, mark_failed, run_row
from kpi.crypto.steps import (
    Gate,
    GateFailed,
    NotPublishable,
    StagingUnavailable,
    StaleStage,
    ValidationFailed,
    judge_rejects,
    publish_rows,
    publish_window,
    record_gate_failed,
    record_rejects,
    record_validation,
    report_run,
    require_publishable,
    run_validation,
    stage_window,
)
from kpi.crypto.window import new_run_id
from kpi.settings import Settings, get_settings

log = logging.getLogger(__name__)


def run_window(day: dt.date, run_id: str | None = None, settings: Settings | None = None) -> dict:
    """Stage, validate, quarantine, gate and publish the window ending on ``day``, in one process.

    Stage, then GE's validation on a thread of its own (its own connections) WHILE this connection
    quarantines, gates and writes the publish in one transaction. Before it commits, that transaction
    records the validation and checks, as the DAG's publish does, that the run is publishable: nobody
    ever sees prod holding rows that were not validated (the transaction is invisible until it commits),
    and a failed or disagreeing validation rolls back everything (the rejects included).

    Returns:
        The run's summary; on a failed gate it has ``ok: False`` and ``error`` (prod untouched).

    Raises:
        Whatever a step raised; the run is then recorded as failed with that error.
    """
    from concurrent.futures import ThreadPoolExecutor

    from kpi.db import connect, database_url

    settings = settings or get_settings()
    run_id = run_id or new_run_id(day)
    with connect(database_url(settings)) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (CRYPTO_LOCK,))
        conn.commit()
        timings: dict[str, float] = {}
        began = time.perf_counter()
        try:
            stage_window(day, run_id, settings, conn, mode="run")
            timings["stage"] = round(time.perf_counter() - began, 3)
            staged = run_row(conn, run_id, settings)
            conn.commit()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kpi-validate") as pool:
                began = time.perf_counter()
                validation = pool.submit(run_validation, settings, run_id, day, staged["stage_reasons"] or {})
                try:
                    lock(conn)  # one transaction from here to the commit below
                    record_rejects(conn, staged, settings, status=None)
                    gate = judge_rejects(staged, settings)
                    result = publish_rows(conn, staged, gate, settings) if gate.passed else gate
                    timings["quarantine_publish"] = round(time.perf_counter() - began, 3)
                    outcome = validation.result()  # raises when GE failed or disagreed: rollback below
                    timings["validate"] = round(time.perf_counter() - began, 3)
                    record_validation(conn, run_id, outcome, settings, passed=True, status=None)
                    require_publishable(run_row(conn, run_id, settings))
                    if isinstance(result, Gate):
                        record_gate_failed(conn, staged, result, settings)
                    conn.commit()
                    timings["validate_quarantine_publish"] = round(time.perf_counter() - began, 3)
                except BaseException:
                    conn.rollback()  # leaving the pool still waits for the validation thread
                    raise
            summary = {**report_run(day, run_id, settings, conn), "seconds": timings}
            if isinstance(result, Gate):
                return {"ok": False, "error": result.message, **summary}
            return summary
        except Exception as exc:
            mark_failed(run_id, "run", exc, settings, conn)
            raise
        finally:
            with contextlib.suppress(psycopg.Error):  # never hide the run's own error behind this one
                conn.rollback()  # nothing is pending here: every step committed or rolled back
                conn.execute("SELECT pg_advisory_unlock(%s)", (CRYPTO_LOCK,))
                conn.commit()


def fail_without_retry(exc: Exception) -> Exception:
    """``exc`` as Airflow's AirflowFailException (no retries: a retry would meet the same data), or itself
    outside Airflow."""
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # outside Airflow
        return exc
    failure = AirflowFailException(str(exc))
    failure.__cause__ = exc
    return failure


def publish_window_or_fail(day: dt.date, run_id: str, settings: Settings | None = None) -> dict:
    """:func:`~kpi.crypto.steps.publish_window` for orchestrators.

    When another run published an overlapping window after this run was staged (steps of two
    runs interleaved), the stage is stale: the whole window is redone here (:func:`run_window`), so the
    run still ends with prod matching the source.
    """
    try:
        return publish_window(day, run_id, settings)
    except StaleStage as stale:
        log.warning("%s: staging, validating and publishing the window again", stale)
        summary = run_window(day, run_id, settings)
        if summary.get("ok") is False:
            raise GateFailed(summary["error"], summary) from None
        return {**summary, "restaged": True}


def check_landing_or_fail(summary: dict) -> dict:
    """:func:`~kpi.crypto.landing.raise_for_set_aside` for the DAG: set-aside files fail the run, without
    retries (they have been moved aside; a retry would find nothing to complain about)."""
    from kpi.crypto.landing import LandingError, raise_for_set_aside

    try:
        raise_for_set_aside(summary)
    except LandingError as exc:
        raise fail_without_retry(exc) from exc
    return {"set_aside": 0, "ingested": len(summary.get("ingested", [])), "skipped": len(summary.get("skipped", []))}


def run_dag_step(step: str, run_id: str, data_interval_end: dt.datetime | None,
                 run_after: dt.datetime | None = None) -> dict:
    """One task of the ``crypto_events`` DAG: the step ``step`` for the last day complete at the end of the
    run's data interval, or at its ``run_after`` when it has none (:func:`~kpi.crypto.window.run_day`).

    Failures a retry cannot fix (a failed gate, a run that may not be published, a failed validation, a
    conservation error, freed staging rows) fail the task without retries.
    """
    from kpi.crypto.steps import ConservationError, quarantine_rows, validate_window
    from kpi.crypto.window import run_day

    steps = {"stage": stage_window, "validate": validate_window, "quarantine": quarantine_rows,
             "publish": publish_window_or_fail, "report": report_run}
    day = run_day(data_interval_end, run_after)
    try:
        return steps[step](day, run_id)
    except (GateFailed, NotPublishable, StagingUnavailable, ValidationFailed, ConservationError) as exc:
        raise fail_without_retry(exc) from exc


def record_task_failure(context: dict) -> None:
    """Airflow ``on_failure_callback``: a task that failed without its step's own handling (killed, timed
    out, its process lost) still marks the run failed in ``dq_runs`` (a no-op when the run has no record)."""
    ti = context.get("ti") or context.get("task_instance")
    error = context.get("exception") or RuntimeError("the task failed (killed, timed out or lost)")
    mark_failed(context["run_id"], getattr(ti, "task_id", "task"), error, only_unfinished=True)
