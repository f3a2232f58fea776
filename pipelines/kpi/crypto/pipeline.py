"""The rolling refresh of the window [D-(n-1), D]: stage, validate, quarantine, gate + publish, report.

Every step is a plain function of ``(logical_date, run_id)`` so that the Airflow DAG can call one per
task and ``kpi crypto run`` can call them all in one process. The heavy work is SQL executed by
Postgres (``sql/crypto/*.sql``); no row of the window is pulled into Python.

Locking: each step runs in one transaction that takes ``pg_advisory_xact_lock(CRYPTO_LOCK)``, and
:func:`run_window` holds the same lock at session level for the whole run, so two runs (overlapping
windows or not) never interleave. Publish additionally refuses a stage that another run's publish
made stale (possible only when steps of two DAG runs are scheduled in between each other).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import psycopg

from kpi.settings import Settings, get_settings

CRYPTO_LOCK = 7_212_031_001  # advisory lock key of the crypto pipeline (any constant unique in the warehouse)
PIPELINE = "crypto_events"
log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    """The rejected share of the window is above the threshold: nothing was published."""

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary


class ConservationError(RuntimeError):
    """Raw rows of the window != staged rows: a bug, never a data problem."""


class StaleStage(RuntimeError):
    """Another run published an overlapping window after this run was staged: rerun this date."""


def window_bounds(logical_date: dt.date, settings: Settings | None = None) -> tuple[dt.date, dt.date]:
    """The window [D-(n-1), D] anchored on the logical date (never on the wall clock)."""
    settings = settings or get_settings()
    return logical_date - dt.timedelta(days=settings.crypto_window_days - 1), logical_date


def new_run_id(logical_date: dt.date) -> str:
    """A run id for runs started outside Airflow."""
    return f"manual__{logical_date.isoformat()}__{uuid.uuid4().hex[:8]}"


@cache
def sql_statement(name: str, sql_dir: str) -> str:
    """Text of ``sql/crypto/<name>.sql``; the stage statement gets the rule list's reasons expression."""
    text = (Path(sql_dir) / "crypto" / f"{name}.sql").read_text()
    if "/*REASONS*/" in text:
        from kpi.crypto.rules import reasons_sql

        text = text.replace("/*REASONS*/", reasons_sql())
    return text


def _sql(name: str, settings: Settings) -> str:
    return sql_statement(name, str(settings.resolved_sql_dir))


@contextlib.contextmanager
def _connection(settings: Settings, conn: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
    if conn is not None:
        yield conn
        return
    from kpi.db import connect, database_url

    with connect(database_url(settings)) as own:
        yield own


def _lock(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CRYPTO_LOCK,))


def _run_row(conn: psycopg.Connection, run_id: str) -> dict:
    cur = conn.execute("SELECT * FROM dqm.dq_runs WHERE run_id = %s", (run_id,))
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"run {run_id!r} has not been staged (run the stage step first)")
    return dict(zip([c.name for c in cur.description], row))


def _status_counts(conn: psycopg.Connection, run_id: str) -> dict:
    rows = conn.execute("SELECT status, count(*) FROM staging.bt_crypto_events_candidate WHERE run_id = %s"
                        " GROUP BY status", (run_id,)).fetchall()
    counts = {"valid": 0, "rejected": 0, "superseded": 0} | {s: n for s, n in rows}
    return counts


def reason_counts(conn: psycopg.Connection, run_id: str) -> dict[str, int]:
    """Rows of the run per broken rule (a row breaking two rules counts for both)."""
    rows = conn.execute(
        "SELECT reason, count(*) FROM staging.bt_crypto_events_candidate, unnest(reasons) AS reason"
        " WHERE run_id = %s GROUP BY reason ORDER BY count(*) DESC, reason", (run_id,)).fetchall()
    return {r: n for r, n in rows}


def primary_reason_counts(conn: psycopg.Connection, run_id: str) -> dict[str, int]:
    """Rejected rows of the run per first broken rule (the ``reason`` stored with each reject)."""
    rows = conn.execute(
        "SELECT reasons[1], count(*) FROM staging.bt_crypto_events_candidate WHERE run_id = %s"
        " AND status = 'rejected' GROUP BY 1 ORDER BY 2 DESC, 1", (run_id,)).fetchall()
    return {r: n for r, n in rows}


# ------------------------------------------------------------------------------------------------------
# steps
# ------------------------------------------------------------------------------------------------------


def stage_window(logical_date: dt.date, run_id: str, settings: Settings | None = None,
                 conn: psycopg.Connection | None = None) -> dict:
    """Type the window's raw rows into staging and open the run in dq_runs.

    Two statements: the window's days (raw rows per day, latest extract per day), then one
    ``INSERT ... SELECT`` of every raw row of the window with its status and reasons.

    Also checks conservation: the raw rows of the window, counted independently, equal the staged rows.
    """
    from kpi.crypto.rules import sql_params

    settings = settings or get_settings()
    start, end = window_bounds(logical_date, settings)
    params = {"run_id": run_id, "window_start": start, "window_end": end,
              **sql_params(settings.crypto_allowed_sites, settings.crypto_allowed_cryptos)}
    with _connection(settings, conn) as c:
        _lock(c)
        c.execute("SET LOCAL work_mem = '256MB'")  # the window's sort stays in memory up to ~1M rows
        # keep staging small: rows of finished runs and of this run's earlier attempt go; when no other
        # run is in flight that is every row, and TRUNCATE frees a 1M-row window at once (DELETE took seconds)
        in_flight = c.execute("SELECT count(*) FROM dqm.dq_runs WHERE pipeline = %s AND finished_at IS NULL"
                              " AND run_id <> %s", (PIPELINE, run_id)).fetchone()[0]
        if in_flight:
            c.execute("DELETE FROM staging.bt_crypto_events_candidate WHERE run_id = %s OR run_id IN"
                      " (SELECT run_id FROM dqm.dq_runs WHERE finished_at IS NOT NULL)", (run_id,))
        else:
            c.execute("TRUNCATE staging.bt_crypto_events_candidate")
        days = c.execute(_sql("window_days", settings), params).fetchall()
        raw_rows = sum(n for _, _, n in days)
        staged = c.execute(_sql("stage_window", settings), {
            **params, "days": [d for d, _, _ in days], "latest_batches": [b for _, b, _ in days]}).rowcount
        if staged != raw_rows:
            raise ConservationError(f"window {start}..{end}: {raw_rows} raw rows but {staged} staged")
        # statistics for the publish joins (only the columns they filter and join on: a full ANALYZE of the
        # wide rows took 0.4 s for 1M rows)
        c.execute("ANALYZE staging.bt_crypto_events_candidate"
                  " (run_id, status, superseded_by, window_date, site_id, user_id, purchase_date, crypto_type)")
        counts = _status_counts(c, run_id)
        c.execute(
            "INSERT INTO dqm.dq_runs (run_id, pipeline, logical_date, window_start, window_end, status, raw_rows,"
            " staged, valid, quarantined, superseded, reject_threshold, started_at)"
            " VALUES (%(run_id)s, %(pipeline)s, %(d)s, %(s)s, %(e)s, 'staged', %(raw)s, %(staged)s, %(valid)s,"
            " %(rejected)s, %(superseded)s, %(threshold)s, now())"
            " ON CONFLICT (run_id) DO UPDATE SET logical_date = EXCLUDED.logical_date,"
            " window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end, status = 'staged',"
            " gate = NULL, raw_rows = EXCLUDED.raw_rows, staged = EXCLUDED.staged, valid = EXCLUDED.valid,"
            " quarantined = EXCLUDED.quarantined, superseded = EXCLUDED.superseded, inserted = NULL,"
            " updated = NULL, unchanged = NULL, deactivated = NULL, reactivated = NULL, error = NULL,"
            " reject_threshold = EXCLUDED.reject_threshold, started_at = now(), finished_at = NULL",
            {"run_id": run_id, "pipeline": PIPELINE, "d": logical_date, "s": start, "e": end, "raw": raw_rows,
             "staged": staged, "threshold": settings.crypto_reject_threshold, **counts})
        c.commit()
    return jsonable({"run_id": run_id, "logical_date": logical_date, "window_start": start, "window_end": end,
                     "raw_rows": raw_rows, "staged": staged, **counts})


def run_validation(settings: Settings, run_id: str, logical_date: dt.date, expected: dict[str, int]) -> dict:
    """Run the GE suite (built from the rule list) inside Postgres on the run's current rows and check it.

    Stores the validation result and Data Docs under ``KPI_STORAGE_URL``. Raises when a structural
    expectation fails or when GE's unexpected counts differ from ``expected`` (the rows per reason that the
    stage computed from the same rule list: any difference is a bug). Takes no lock and writes nothing to
    the warehouse, so it can run beside the publish transaction (see :func:`run_window`).
    """
    from kpi.crypto.validation import run_expectations

    outcome = run_expectations(settings, run_id, logical_date)
    disagree = {r: (outcome["unexpected"].get(r, 0), expected.get(r, 0))
                for r in set(outcome["unexpected"]) | set(expected)
                if outcome["unexpected"].get(r, 0) != expected.get(r, 0)}
    broken_structure = {r: n for r, n in outcome["structural"].items() if n != 0}
    if broken_structure:
        raise RuntimeError(f"structural expectations failed on the staged rows (a stage bug): {broken_structure}")
    if disagree:
        raise RuntimeError(f"GE and the row-level rules disagree (reason: (GE, rows)): {disagree}")
    return outcome


def _record_validation(c: psycopg.Connection, run_id: str, outcome: dict, status: str | None = None) -> None:
    """Store GE's outcome in ``dq_runs``; ``status`` replaces the run's status when given."""
    c.execute("UPDATE dqm.dq_runs SET status = COALESCE(%s, status), ge_success = %s, ge_statistics = %s,"
              " ge_results_url = %s, data_docs_url = %s WHERE run_id = %s",
              (status, outcome["success"], json.dumps(outcome["statistics"]), outcome["results_url"],
               outcome["data_docs_url"], run_id))


def validate_window(logical_date: dt.date, run_id: str, settings: Settings | None = None,
                    conn: psycopg.Connection | None = None) -> dict:
    """The validation step: :func:`run_validation` on the staged run, then ``dq_runs`` says validated."""
    settings = settings or get_settings()
    with _connection(settings, conn) as c:
        run = _run_row(c, run_id)
        expected = reason_counts(c, run_id)
        c.commit()
    outcome = run_validation(settings, run_id, logical_date, expected)
    with _connection(settings, conn) as c:
        _lock(c)
        _record_validation(c, run_id, outcome, status="validated")
        c.commit()
    return {"run_id": run_id, "raw_rows": run["raw_rows"], "ge_success": outcome["success"],
            "ge_statistics": outcome["statistics"], "broken_rules": expected,
            "ge_results_url": outcome["results_url"], "data_docs_url": outcome["data_docs_url"]}


def _quarantine(c: psycopg.Connection, run_id: str, logical_date: dt.date, settings: Settings) -> dict:
    recorded = c.execute(_sql("quarantine", settings), {"run_id": run_id, "logical_date": logical_date}).rowcount
    reasons = primary_reason_counts(c, run_id)
    c.execute("UPDATE dqm.dq_runs SET status = 'quarantined', top_reasons = %s WHERE run_id = %s",
              (json.dumps(reasons), run_id))
    return {"run_id": run_id, "quarantined": sum(reasons.values()), "rejects_recorded": recorded,
            "reasons": reasons}


def quarantine_rows(logical_date: dt.date, run_id: str, settings: Settings | None = None,
                    conn: psycopg.Connection | None = None) -> dict:
    """Copy the run's rejected rows, with their original raw values, into ``dqm.bt_crypto_events_rejects``."""
    settings = settings or get_settings()
    with _connection(settings, conn) as c:
        _lock(c)
        _run_row(c, run_id)
        result = _quarantine(c, run_id, logical_date, settings)
        c.commit()
    return result


def check_gate(counts: dict, threshold: float) -> tuple[bool, float]:
    """(passes, rejected share): the share is rejected / (valid + rejected), the rows up for validation."""
    judged = counts["valid"] + counts["rejected"]
    share = counts["rejected"] / judged if judged else 0.0
    return share <= threshold, share


def _gate(c: psycopg.Connection, run: dict, logical_date: dt.date,
          settings: Settings) -> tuple[dict, float, tuple[str, dict[str, int]] | None]:
    """(status counts, rejected share, None or (failure message, rejected rows per first reason)).
    Refuses a stage made stale by another run's publish of an overlapping window."""
    stale = c.execute(
        "SELECT run_id FROM dqm.dq_runs WHERE pipeline = %s AND run_id <> %s AND status = 'published'"
        " AND window_start <= %s AND window_end >= %s AND finished_at > %s LIMIT 1",
        (PIPELINE, run["run_id"], run["window_end"], run["window_start"], run["started_at"])).fetchone()
    if stale:
        raise StaleStage(f"run {stale[0]} published an overlapping window after {run['run_id']} was staged;"
                         " rerun this date")
    # the stage's counts (dq_runs) are the staged rows' counts: nothing changes staging after the stage
    counts = {"valid": run["valid"], "rejected": run["quarantined"], "superseded": run["superseded"]}
    passed, share = check_gate(counts, settings.crypto_reject_threshold)
    if passed:
        return counts, share, None
    top = primary_reason_counts(c, run["run_id"])
    top_text = ", ".join(f"{r} ({n})" for r, n in list(top.items())[:3])
    return counts, share, (f"gate failed for {logical_date}: {counts['rejected']} of "
                           f"{counts['valid'] + counts['rejected']} rows rejected ({share:.1%} > "
                           f"{settings.crypto_reject_threshold:.1%}); top reasons: {top_text}; nothing published",
                           top)


def _record_gate_failed(c: psycopg.Connection, run_id: str, share: float, message: str,
                        top: dict[str, int]) -> dict:
    c.execute("UPDATE dqm.dq_runs SET status = 'gate_failed', gate = 'failed', reject_share = %s,"
              " top_reasons = %s, error = %s, finished_at = now() WHERE run_id = %s",
              (share, json.dumps(top), message, run_id))
    return {"gate": "failed", "reject_share": share, "top_reasons": top}


def _publish(c: psycopg.Connection, run_id: str, counts: dict, share: float, settings: Settings) -> dict:
    """Write the run's valid rows to prod (in the caller's transaction, not committed here)."""
    params = {"run_id": run_id}
    c.execute("SET LOCAL work_mem = '256MB'")
    reactivated = c.execute(_sql("publish_reactivated", settings), params).fetchone()[0]
    # deactivate first: it touches only keys the run does not hold, the upsert only keys it holds, so the
    # order does not change the result, and the anti-join then scans prod before this run's inserts land
    deactivated = c.execute(_sql("publish_deactivate", settings), params).rowcount
    inserted, updated = c.execute(_sql("publish_upsert", settings), params).fetchone()
    unchanged = counts["valid"] - inserted - updated
    c.execute("UPDATE dqm.dq_runs SET status = 'published', gate = 'passed', reject_share = %s,"
              " inserted = %s, updated = %s, unchanged = %s, deactivated = %s, reactivated = %s,"
              " finished_at = now() WHERE run_id = %s",
              (share, inserted, updated, unchanged, deactivated, reactivated, run_id))
    return {"run_id": run_id, "gate": "passed", "reject_share": share, "published": counts["valid"],
            "inserted": inserted, "updated": updated, "unchanged": unchanged, "deactivated": deactivated,
            "reactivated": reactivated}


def publish_window(logical_date: dt.date, run_id: str, settings: Settings | None = None,
                   conn: psycopg.Connection | None = None) -> dict:
    """Gate, then publish the run's valid rows to prod in ONE transaction.

    Upserts changed rows only, re-activates keys that come back and deactivates keys of the window's
    days that the source no longer has. On a failed gate nothing is published and :class:`GateFailed`
    names the top reasons.
    """
    settings = settings or get_settings()
    with _connection(settings, conn) as c:
        _lock(c)
        run = _run_row(c, run_id)
        counts, share, failure = _gate(c, run, logical_date, settings)
        if failure:
            detail = _record_gate_failed(c, run_id, share, *failure)
            c.commit()
            raise GateFailed(failure[0], detail)
        result = _publish(c, run_id, counts, share, settings)
        c.commit()
    return result


def publish_window_or_fail(logical_date: dt.date, run_id: str, settings: Settings | None = None) -> dict:
    """:func:`publish_window` for orchestrators.

    A failed gate fails the task without retries (a retry would see the same data), other errors stay
    retryable. When another run published an overlapping window after this run was staged (steps of two
    DAG runs interleaved), the stage is stale: the whole window is redone here (stage, validation,
    quarantine, publish, as :func:`run_window` does), so the run still ends with prod matching the source.
    """
    try:
        try:
            return publish_window(logical_date, run_id, settings)
        except StaleStage as stale:
            log.warning("%s: staging, validating and publishing the window again", stale)
            summary = run_window(logical_date, run_id, settings)
            if summary.get("ok") is False:
                raise GateFailed(summary["error"], summary) from None
            return {**summary, "restaged": True}
    except GateFailed as exc:
        try:
            from airflow.exceptions import AirflowFailException
        except ImportError:  # outside Airflow
            raise exc from None
        raise AirflowFailException(str(exc)) from exc


def report_run(logical_date: dt.date, run_id: str, settings: Settings | None = None,
               conn: psycopg.Connection | None = None) -> dict:
    """The run's summary from ``dqm.dq_runs`` with conservation re-checked (staging rows are freed by the
    next stage)."""
    settings = settings or get_settings()
    with _connection(settings, conn) as c:
        run = _run_row(c, run_id)
        summary = run_summary(run)
        if summary["raw_rows"] != summary["published"] + summary["quarantined"] + summary["superseded"]:
            raise ConservationError(f"run {run_id}: raw_rows != published + quarantined + superseded: {summary}")
        c.commit()
    return jsonable(summary)


def jsonable(value):
    """``value`` with dates as ISO strings and decimals as floats (XCom- and JSON-safe)."""
    return json.loads(json.dumps(value, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else float(o)))


def run_summary(run: dict) -> dict:
    """The public summary of one dq_runs row."""
    keys = ("run_id", "logical_date", "window_start", "window_end", "status", "gate", "raw_rows", "staged",
            "inserted", "updated", "unchanged", "deactivated", "reactivated", "quarantined", "superseded",
            "reject_share", "reject_threshold", "ge_success", "ge_results_url", "data_docs_url")
    summary = {k: run.get(k) for k in keys}
    summary["published"] = run.get("valid") or 0
    top = run.get("top_reasons") or {}
    summary["top_reasons"] = dict(sorted(top.items(), key=lambda kv: (-kv[1], kv[0])))  # jsonb loses order
    summary["warnings"] = []
    if run.get("raw_rows") == 0:
        # not a failure (a catch-up over days before the first extract is normal), but never silent
        summary["warnings"].append(f"no raw rows in the window {run.get('window_start')}..{run.get('window_end')}:"
                                   " no ingested extract covers it, nothing was published or deactivated")
    return summary


def run_window(logical_date: dt.date, run_id: str | None = None, settings: Settings | None = None) -> dict:
    """All steps for one logical date in one process, under a session-level advisory lock.

    Stage, then validation by GE on a thread of its own (its own connections) WHILE this connection
    quarantines, gates and writes the publish in one transaction; that transaction commits only after
    the validation has passed and agreed with the row-level reasons, and rolls back otherwise. Nobody
    ever sees prod holding rows that were not validated (the transaction is invisible until it
    commits), and the two CPU-bound halves use both cores. The Airflow DAG runs the same steps one
    task after the other instead (:func:`validate_window` ... :func:`publish_window`).

    Returns the summary; on a failed gate the summary has ``ok: False`` and ``error`` (prod untouched).
    """
    from concurrent.futures import ThreadPoolExecutor

    from kpi.db import connect, database_url

    settings = settings or get_settings()
    run_id = run_id or new_run_id(logical_date)
    with connect(database_url(settings)) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (CRYPTO_LOCK,))
        conn.commit()
        timings: dict[str, float] = {}
        began = time.perf_counter()
        try:
            stage_window(logical_date, run_id, settings, conn)
            timings["stage"] = round(time.perf_counter() - began, 3)
            expected = reason_counts(conn, run_id)
            conn.commit()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kpi-validate") as pool:
                began = time.perf_counter()
                validation = pool.submit(run_validation, settings, run_id, logical_date, expected)
                try:
                    # one transaction from here to the commit below
                    _lock(conn)
                    run = _run_row(conn, run_id)
                    _quarantine(conn, run_id, logical_date, settings)
                    counts, share, failure = _gate(conn, run, logical_date, settings)
                    if not failure:
                        _publish(conn, run_id, counts, share, settings)
                    timings["quarantine_publish"] = round(time.perf_counter() - began, 3)
                    outcome = validation.result()  # raises when GE failed or disagreed: rollback below
                    timings["validate"] = round(time.perf_counter() - began, 3)
                    _record_validation(conn, run_id, outcome)  # status stays what the publish or gate wrote
                    if failure:
                        _record_gate_failed(conn, run_id, share, *failure)
                    conn.commit()
                    timings["validate_quarantine_publish"] = round(time.perf_counter() - began, 3)
                except BaseException:
                    conn.rollback()  # leaving the pool still waits for the validation thread
                    raise
            summary = {**report_run(logical_date, run_id, settings, conn), "seconds": timings}
            if failure:
                return {"ok": False, "error": failure[0], **summary}
            return summary
        except Exception as exc:
            conn.rollback()
            _mark_failed(conn, run_id, exc)
            raise
        finally:
            with contextlib.suppress(psycopg.Error):  # never hide the run's own error behind this one
                conn.rollback()  # nothing is pending here: every step committed or rolled back
                conn.execute("SELECT pg_advisory_unlock(%s)", (CRYPTO_LOCK,))
                conn.commit()


def _mark_failed(conn: psycopg.Connection, run_id: str, exc: Exception) -> None:
    # best effort: a failed step leaves a trace in dq_runs (the run row exists once staged); if even that
    # fails (no dq_runs table yet), roll back so the caller's error, not this one, is what gets reported
    try:
        conn.execute("UPDATE dqm.dq_runs SET status = 'failed', error = %s, finished_at = now()"
                     " WHERE run_id = %s AND status <> 'gate_failed'", (f"{type(exc).__name__}: {exc}", run_id))
        conn.commit()
    except psycopg.Error:
        conn.rollback()
