"""Run records: one row of ``dqm.dq_runs`` per run, written by every step (SQL: ``sql/crypto/dq_runs.sql``).

A run's status is the outcome of its last step: ``staging`` (the stage is working on it), ``staged``,
``validated``, ``quarantined``, ``published``, ``gate_failed`` or ``failed`` (with the error). Any step
that fails marks the run ``failed`` (:func:`mark_failed`); a run nobody carries on is reaped by the next
stage (:func:`reap_abandoned`), which also frees the staging rows of every finished run.
"""

from __future__ import annotations

import json
import logging

import psycopg

from kpi.crypto.queries import sql
from kpi.settings import Settings, get_settings

PIPELINE = "crypto_events"
CRYPTO_LOCK = 7_212_031_001  # advisory lock key of the crypto pipeline (any constant unique in the warehouse)
log = logging.getLogger(__name__)


def lock(conn: psycopg.Connection) -> None:
    """Take the pipeline's lock until the end of the current transaction."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CRYPTO_LOCK,))


def run_row(conn: psycopg.Connection, run_id: str, settings: Settings, for_update: bool = False) -> dict:
    """The run's ``dq_runs`` row as a dict.

    Raises:
        LookupError: the run has not been staged.
    """
    cur = conn.execute(sql("dq_runs:row_for_update" if for_update else "dq_runs:row", settings), {"run_id": run_id})
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"run {run_id!r} has not been staged (run the stage step first)")
    return dict(zip([c.name for c in cur.description], row, strict=True))


def open_run(conn: psycopg.Connection, run_id: str, logical_date, window: tuple, mode: str,
             settings: Settings) -> None:
    """Start the run's record afresh (status ``staging``), in the caller's transaction."""
    conn.execute(sql("dq_runs:forget", settings), {"run_id": run_id})
    conn.execute(sql("dq_runs:open", settings), {
        "run_id": run_id, "pipeline": PIPELINE, "logical_date": logical_date, "window_start": window[0],
        "window_end": window[1], "mode": mode, "reject_threshold": settings.crypto_reject_threshold})


def reap_abandoned(conn: psycopg.Connection, run_id: str, settings: Settings) -> dict:
    """Fail the runs nobody carries on and free the staging rows of every run but those in flight.

    Call it holding the pipeline's lock (the stage does). Returns ``{reaped: {run_id: error}, in_flight:
    [...], staging: "truncated" | "deleted"}``.
    """
    params = {"run_id": run_id, "pipeline": PIPELINE, "orphan_minutes": settings.crypto_orphan_minutes}
    reaped = dict(conn.execute(sql("dq_runs:reap", settings), params).fetchall())
    for reaped_id, error in reaped.items():
        log.warning("run %s: %s", reaped_id, error)
    in_flight = [r for (r,) in conn.execute(sql("dq_runs:in_flight", settings), params).fetchall()]
    if in_flight:
        conn.execute(sql("staging:delete_all_but", settings), {"keep": in_flight})
    else:
        conn.execute(sql("staging:truncate", settings))
    conn.execute(sql("dq_runs:staging_freed", settings), {**params, "keep": in_flight})
    return {"reaped": reaped, "in_flight": in_flight, "staging": "deleted" if in_flight else "truncated"}


def record(conn: psycopg.Connection, statement: str, settings: Settings, **values) -> None:
    """Run ``dq_runs:<statement>`` with ``values`` (dicts become jsonb), in the caller's transaction."""
    params = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in values.items()}
    conn.execute(sql(f"dq_runs:{statement}", settings), params)


def mark_failed(run_id: str, step: str, exc: BaseException, settings: Settings | None = None,
                conn: psycopg.Connection | None = None, only_unfinished: bool = False) -> None:
    """Mark the run ``failed`` with ``exc`` as its error (best effort, never raises).

    With ``conn`` (the failed step's connection) its transaction is rolled back first, so that the
    step's own uncommitted writes cannot block this update; else a connection of its own is used.
    ``only_unfinished`` leaves a run alone whose step already recorded how it ended.
    """
    settings = settings or get_settings()
    error = f"{step}: {type(exc).__name__}: {exc}"
    statement = "failed_if_unfinished" if only_unfinished else "failed"
    try:
        if conn is not None and not conn.closed:
            conn.rollback()
            record(conn, statement, settings, run_id=run_id, step=step, error=error)
            conn.commit()
            return
        from kpi.db import connect, database_url

        with connect(database_url(settings)) as own:
            record(own, statement, settings, run_id=run_id, step=step, error=error)
            own.commit()
    except Exception as follow_up:  # noqa: BLE001 - the step's own error is the one to report
        log.warning("could not mark run %s failed (%s); the step's error follows", run_id, follow_up)
        if conn is not None and not conn.closed:
            try:
                conn.rollback()
            except psycopg.Error:
                pass


def run_summary(run: dict) -> dict:
    """The public summary of one ``dq_runs`` row (JSON-safe)."""
    keys = ("run_id", "logical_date", "window_start", "window_end", "mode", "status", "gate", "gate_reason",
            "raw_rows", "staged", "valid", "published", "inserted", "updated", "unchanged", "deactivated",
            "reactivated", "active_keys", "would_deactivate", "quarantined", "superseded", "reject_share",
            "reject_threshold", "validation", "ge_success", "ge_results_url", "data_docs_url", "error", "reaped_by")
    summary = {k: run.get(k) for k in keys}
    summary["published"] = run.get("published") or 0  # nothing reached prod unless the run published
    top = run.get("top_reasons") or {}
    summary["top_reasons"] = dict(sorted(top.items(), key=lambda kv: (-kv[1], kv[0])))  # jsonb loses order
    summary["warnings"] = []
    if run.get("raw_rows") == 0:
        # not a failure (a catch-up over days before the first extract is normal), but never silent
        summary["warnings"].append(f"no raw rows in the window {run.get('window_start')}..{run.get('window_end')}:"
                                   " no ingested extract covers it, nothing was published or deactivated")
    return jsonable(summary)


def jsonable(value):
    """``value`` with dates as ISO strings and decimals as floats (XCom- and JSON-safe)."""
    return json.loads(json.dumps(value, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else float(o)))
