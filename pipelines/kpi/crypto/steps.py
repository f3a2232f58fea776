"""The steps of the rolling refresh of the window [D-(n-1), D]: stage, validate, quarantine, publish, report.

Each step is a plain function of ``(day, run_id)``: the Airflow DAG calls one per task, ``kpi crypto run``
calls them in one process (:mod:`kpi.crypto.pipeline`). The heavy work is SQL run by Postgres
(``sql/crypto/*.sql``); no row of the window is pulled into Python. Every step records its outcome in
``dqm.dq_runs`` (:mod:`kpi.crypto.runs`), and a step that fails marks the run ``failed`` with its error.

Locking: each step's writes run in one transaction holding ``pg_advisory_xact_lock(CRYPTO_LOCK)``, so two
runs never interleave their writes. The publish refuses a run whose validation did not pass and agree with
the row-level reasons, whose rejects were not recorded, or whose stage another run's publish made stale.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import namedtuple_row

from kpi.crypto.queries import sql
from kpi.crypto.rules import sql_params
from kpi.crypto.runs import (
    PIPELINE,
    jsonable,
    lock,
    mark_failed,
    open_run,
    reap_abandoned,
    record,
    run_row,
    run_summary,
)
from kpi.crypto.window import window_bounds
from kpi.settings import Settings, get_settings

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    """The window may not be published (too many rejected rows, or too many keys to deactivate)."""

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary


class ConservationError(RuntimeError):
    """The stage's rows differ from the rows the ingest counted: a bug, never a data problem."""


class StaleStage(RuntimeError):
    """Another run published an overlapping window after this run was staged: stage this date again."""


class ValidationFailed(RuntimeError):
    """GE's structural checks failed, or its counts disagree with the row-level reasons (a bug)."""


class StagingUnavailable(RuntimeError):
    """The run's staged rows are not there (its stage failed, or a later stage freed them): stage it again."""


class NotPublishable(RuntimeError):
    """The run may not be published: not validated, GE disagrees with the stage, or rejects not recorded."""


@contextlib.contextmanager
def _connection(settings: Settings, conn: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
    if conn is not None:
        yield conn
        return
    from kpi.db import connect, database_url

    with connect(database_url(settings)) as own:
        yield own


def recorded_step(name: str) -> Callable:
    """Make a step mark its run ``failed`` with the error when it raises (a failed gate is recorded as such)."""

    def decorate(step: Callable) -> Callable:
        @functools.wraps(step)
        def run(day: dt.date, run_id: str, settings: Settings | None = None, conn: psycopg.Connection | None = None,
                **kwargs):
            settings = settings or get_settings()
            try:
                return step(day, run_id, settings, conn, **kwargs)
            except GateFailed:
                raise
            except Exception as exc:
                mark_failed(run_id, name, exc, settings, conn)
                raise

        return run

    return decorate


def _require_staging(run: dict) -> None:
    if run["status"] == "staging":
        raise StagingUnavailable(f"run {run['run_id']} was never staged completely (its stage failed or is still running)")
    if run.get("staging_freed_at") is not None:
        raise StagingUnavailable(f"the staging rows of run {run['run_id']} were freed at {run['staging_freed_at']}"
                             f"{' by run ' + run['reaped_by'] if run.get('reaped_by') else ''}: stage this date again")


def tally(rows: list[tuple]) -> dict:
    """Counts of the stage statement's rows ``(window_date, status, reasons, n)``: per day, per status, rows per
    broken rule (a row breaking two rules counts for both) and rejected rows per first broken rule."""
    per_day: Counter = Counter()
    status = {"valid": 0, "rejected": 0, "superseded": 0}
    reasons: Counter = Counter()
    first: Counter = Counter()
    for day, state, broken, n in rows:
        per_day[day] += n
        status[state] += n
        for reason in broken or ():
            reasons[reason] += n
        if state == "rejected":
            first[broken[0]] += n
    return {"per_day": dict(per_day), **status, "reasons": dict(reasons), "first_reasons": dict(first)}


# ------------------------------------------------------------------------------------------------------
# stage
# ------------------------------------------------------------------------------------------------------


@recorded_step("stage")
def stage_window(day: dt.date, run_id: str, settings: Settings, conn: psycopg.Connection | None = None,
                 mode: str = "steps") -> dict:
    """Type the window's raw rows into staging and open the run's record.

    First, in a short transaction of its own: reap abandoned runs, free the staging rows of finished ones,
    and record this run as ``staging`` (so that any failure from here on is recorded). Then, in ONE snapshot
    (repeatable read: an ingest committing meanwhile is not half seen): the window's days from the ingest's
    counts, one ``INSERT ... SELECT`` of every raw row of the window with its status and reasons, and the
    conservation check: per day, the staged rows equal the rows the ingest counted from the files.

    Args:
        day: the window's last day D.
        run_id: the run's id.
        settings: settings.
        conn: a connection to use (``kpi crypto run``), else one of its own.
        mode: ``steps`` (a task per step: abandoned after ``KPI_CRYPTO_ORPHAN_MINUTES`` without a step) or
            ``run`` (one process holding the pipeline lock throughout).
    """
    start, end = window_bounds(day, settings)
    with _connection(settings, conn) as c:
        lock(c)
        housekeeping = reap_abandoned(c, run_id, settings)
        open_run(c, run_id, day, (start, end), mode, settings)
        c.commit()
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        lock(c)
        c.execute("SET LOCAL work_mem = '256MB'")  # the window's sort stays in memory up to ~1M rows
        days = c.cursor(row_factory=namedtuple_row).execute(
            sql("window_days", settings), {"window_start": start, "window_end": end}).fetchall()
        counts = tally(c.execute(sql("stage_window", settings), {
            "run_id": run_id, "days": [d.window_date for d in days], "current_batches": [d.current_batch_id for d in days],
            "current_extract_dates": [d.current_extract_date for d in days],
            "batch_ids": sorted({b for d in days for b in d.batch_ids}),
            **sql_params(settings.crypto_allowed_sites, settings.crypto_allowed_cryptos)}).fetchall())
        expected = {d.window_date: d.raw_rows for d in days}
        wrong = {d.isoformat(): (expected.get(d, 0), counts["per_day"].get(d, 0))
                 for d in set(expected) | set(counts["per_day"]) if expected.get(d, 0) != counts["per_day"].get(d, 0)}
        if wrong:
            raise ConservationError(f"window {start}..{end}: rows per day counted at ingest != staged rows "
                                    f"(day: (ingest, staged)): {wrong}")
        c.execute(sql("staging:analyze", settings))
        raw_rows = sum(expected.values())
        extract_days = [d.window_date for d in days if d.current_batch_id is not None]
        record(c, "staged", settings, run_id=run_id, raw_rows=raw_rows, staged=raw_rows, valid=counts["valid"],
               rejected=counts["rejected"], superseded=counts["superseded"], stage_reasons=counts["reasons"],
               top_reasons=counts["first_reasons"], extract_days=extract_days)
        c.commit()
    return jsonable({"run_id": run_id, "logical_date": day, "window_start": start, "window_end": end,
                     "raw_rows": raw_rows, "staged": raw_rows, "valid": counts["valid"],
                     "rejected": counts["rejected"], "superseded": counts["superseded"],
                     "extract_days": extract_days, "reaped": housekeeping["reaped"]})


# ------------------------------------------------------------------------------------------------------
# validate
# ------------------------------------------------------------------------------------------------------


def validation_problem(outcome: dict, stage_reasons: dict[str, int]) -> str | None:
    """Why a GE outcome does not validate the run (None when it does): a failed structural check, or GE's
    unexpected counts differing from the rows per reason the stage computed from the same rule list."""
    broken = {r: n for r, n in outcome["structural"].items() if n != 0}
    if broken:
        return f"structural expectations failed on the staged rows (a stage bug): {broken}"
    unexpected = outcome["unexpected"]
    disagree = {r: (unexpected.get(r, 0), stage_reasons.get(r, 0)) for r in set(unexpected) | set(stage_reasons)
                if unexpected.get(r, 0) != stage_reasons.get(r, 0)}
    if disagree:
        return f"GE and the row-level rules disagree (reason: (GE, rows)): {disagree}"
    return None


def run_validation(settings: Settings, run_id: str, day: dt.date, stage_reasons: dict[str, int]) -> dict:
    """The GE suite (built from the rule list) on the run's current staged rows, inside Postgres.

    Stores the validation result and Data Docs under ``KPI_STORAGE_URL``; takes no lock and writes nothing
    to the warehouse (``kpi crypto run`` runs it beside its publish transaction).

    Raises:
        ValidationFailed: with the outcome, when :func:`validation_problem` finds one.
    """
    from kpi.crypto.validation import run_expectations

    outcome = run_expectations(settings, run_id, day)
    problem = validation_problem(outcome, stage_reasons)
    if problem:
        error = ValidationFailed(problem)
        error.outcome = outcome
        raise error
    return outcome


def record_validation(conn: psycopg.Connection, run_id: str, outcome: dict, settings: Settings, passed: bool,
                      status: str | None) -> None:
    """Store GE's outcome in the run's record; ``status``, when given, becomes the run's status."""
    record(conn, "validated", settings, run_id=run_id, validation="passed" if passed else "failed",
           ge_success=outcome["success"], ge_statistics=outcome["statistics"], ge_unexpected=outcome["unexpected"],
           ge_results_url=outcome["results_url"], data_docs_url=outcome["data_docs_url"])
    if status:
        record(conn, "step_succeeded", settings, run_id=run_id, status=status, step="validate")


@recorded_step("validate")
def validate_window(day: dt.date, run_id: str, settings: Settings, conn: psycopg.Connection | None = None) -> dict:
    """The validation step: :func:`run_validation` on the staged run, recorded as passed or failed."""
    with _connection(settings, conn) as c:
        run = run_row(c, run_id, settings)
        _require_staging(run)
        record(c, "step_started", settings, run_id=run_id, step="validate")
        c.commit()
    try:
        outcome, passed = run_validation(settings, run_id, day, run["stage_reasons"] or {}), True
    except ValidationFailed as failed:
        outcome, passed = failed.outcome, False
        problem = failed
    with _connection(settings, conn) as c:
        lock(c)
        record_validation(c, run_id, outcome, settings, passed, "validated" if passed else None)
        c.commit()
    if not passed:
        raise problem
    return {"run_id": run_id, "raw_rows": run["raw_rows"], "validation": "passed", "ge_success": outcome["success"],
            "ge_statistics": outcome["statistics"], "broken_rules": run["stage_reasons"],
            "ge_results_url": outcome["results_url"], "data_docs_url": outcome["data_docs_url"]}


# ------------------------------------------------------------------------------------------------------
# quarantine
# ------------------------------------------------------------------------------------------------------


def record_rejects(conn: psycopg.Connection, run: dict, settings: Settings, status: str | None) -> int:
    """Write the run's rejected rows, with their original raw values, to ``dqm.bt_crypto_events_rejects``
    (in the caller's transaction); ``status``, when given, becomes the run's status. Returns the rows written."""
    recorded = conn.execute(sql("quarantine", settings),
                            {"run_id": run["run_id"], "logical_date": run["logical_date"]}).rowcount
    record(conn, "quarantined", settings, run_id=run["run_id"], rejects_recorded=recorded)
    if status:
        record(conn, "step_succeeded", settings, run_id=run["run_id"], status=status, step="quarantine")
    return recorded


@recorded_step("quarantine")
def quarantine_rows(day: dt.date, run_id: str, settings: Settings, conn: psycopg.Connection | None = None) -> dict:
    """Copy the run's rejected rows, with their original raw values, into ``dqm.bt_crypto_events_rejects``."""
    with _connection(settings, conn) as c:
        lock(c)
        run = run_row(c, run_id, settings, for_update=True)
        _require_staging(run)
        recorded = record_rejects(c, run, settings, "quarantined")
        c.commit()
    return {"run_id": run_id, "quarantined": run["quarantined"], "rejects_recorded": recorded,
            "reasons": run["top_reasons"] or {}}


# ------------------------------------------------------------------------------------------------------
# gate and publish
# ------------------------------------------------------------------------------------------------------


def require_publishable(run: dict) -> None:
    """Refuse a run that may not reach prod: validation not passed, or GE's counts not those of the stage,
    rejects not recorded, staging rows freed. Called inside the publish transaction, on the locked record.

    Raises:
        NotPublishable: saying which, and that nothing was published.
        StagingUnavailable: the run's staged rows are not there.
    """
    _require_staging(run)
    who = f"run {run['run_id']}"
    if run.get("validation") != "passed":
        state = "has not been validated" if run.get("validation") is None else "failed its validation"
        raise NotPublishable(f"{who} {state} (status {run['status']}): nothing published; run the validate step")
    if (run.get("ge_unexpected") or {}) != (run.get("stage_reasons") or {}):
        raise NotPublishable(f"{who}: GE's unexpected rows {run.get('ge_unexpected')} differ from the staged rows'"
                             f" reasons {run.get('stage_reasons')}: nothing published")
    if run.get("rejects_recorded") is None:
        raise NotPublishable(f"{who}: its rejected rows were not recorded (quarantine step): nothing published")


@dataclass
class Gate:
    """The gate's verdict on a run."""

    passed: bool
    reject_share: float
    reason: str | None = None  # reject_share | deactivation_share
    message: str | None = None
    details: dict = field(default_factory=dict)


def judge_rejects(run: dict, settings: Settings) -> Gate:
    """The reject-share gate on the stage's counts: rejected / (valid + rejected), the rows that were up for
    validation (superseded rows were not), may not exceed ``KPI_CRYPTO_REJECT_THRESHOLD``."""
    counts = {"valid": run["valid"], "rejected": run["quarantined"]}
    judged = counts["valid"] + counts["rejected"]
    share = counts["rejected"] / judged if judged else 0.0
    if share <= settings.crypto_reject_threshold:
        return Gate(True, share)
    top = dict(sorted((run.get("top_reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0])))
    top_text = ", ".join(f"{r} ({n})" for r, n in list(top.items())[:3])
    return Gate(False, share, "reject_share",
                f"gate failed for {run['logical_date']}: {counts['rejected']} of {counts['valid'] + counts['rejected']}"
                f" rows rejected ({share:.1%} > {settings.crypto_reject_threshold:.1%}); top reasons: {top_text};"
                " nothing published")


def _refuse_stale(conn: psycopg.Connection, run: dict, settings: Settings) -> None:
    stale = conn.execute(sql("dq_runs:stale_by", settings), {
        "pipeline": PIPELINE, "run_id": run["run_id"], "window_start": run["window_start"],
        "window_end": run["window_end"], "started_at": run["started_at"]}).fetchone()
    if stale:
        raise StaleStage(f"run {stale[0]} published an overlapping window after {run['run_id']} was staged;"
                         " stage this date again")


def publish_rows(conn: psycopg.Connection, run: dict, gate: Gate, settings: Settings) -> Gate | dict:
    """Write the run's valid rows to prod in the caller's transaction (not committed here).

    Deactivates the keys of the window's extract days that the source no longer has, unless that would be
    more than ``KPI_CRYPTO_MAX_DEACTIVATION_SHARE`` of their active keys: then the deactivation is rolled
    back and a failed :class:`Gate` (reason ``deactivation_share``) is returned. Otherwise upserts changed
    rows only, re-activates keys that come back, records the publish and returns its counts.
    """
    params = {"run_id": run["run_id"], "days": run["extract_days"] or [], "window_start": run["window_start"],
              "window_end": run["window_end"]}
    conn.execute("SET LOCAL work_mem = '256MB'")
    # every join here hashes one side: a nested loop over an empty-looking prod rescans what the insert adds
    conn.execute("SET LOCAL enable_nestloop = off")
    reactivated = conn.execute(sql("publish_reactivated", settings), params).fetchone()[0]
    # deactivate first: it touches only keys the run does not hold, the upsert only keys it holds, so the
    # order does not change the result, and the anti-join then scans prod before this run's inserts land
    conn.execute("SAVEPOINT deactivation")
    deactivated = conn.execute(sql("publish_deactivate", settings), params).rowcount
    active = deactivated + (conn.execute(sql("publish_active_keys", settings), params).fetchone()[0]
                            if deactivated else 0)
    limit = settings.crypto_max_deactivation_share
    if deactivated and deactivated > limit * active:
        conn.execute("ROLLBACK TO SAVEPOINT deactivation")
        return Gate(False, gate.reject_share, "deactivation_share",
                    f"gate failed for {run['logical_date']}: publishing would deactivate {deactivated} of the"
                    f" {active} active keys of the window's extract days ({deactivated / active:.1%} >"
                    f" {limit:.1%}, KPI_CRYPTO_MAX_DEACTIVATION_SHARE): a truncated or partial extract? nothing"
                    " published", {"active_keys": active, "would_deactivate": deactivated})
    conn.execute("RELEASE SAVEPOINT deactivation")
    updated = conn.execute(sql("publish_upsert:update", settings), params).rowcount
    inserted = conn.execute(sql("publish_upsert:insert", settings), params).rowcount
    counts = {"published": run["valid"], "inserted": inserted, "updated": updated,
              "unchanged": run["valid"] - inserted - updated, "deactivated": deactivated, "reactivated": reactivated,
              "active_keys": active if deactivated else None}
    record(conn, "published", settings, run_id=run["run_id"], reject_share=gate.reject_share, **counts)
    return {"run_id": run["run_id"], "gate": "passed", "reject_share": gate.reject_share, **counts}


def record_gate_failed(conn: psycopg.Connection, run: dict, gate: Gate, settings: Settings) -> dict:
    """Record a failed gate (in the caller's transaction); returns the failure's summary."""
    record(conn, "gate_failed", settings, run_id=run["run_id"], gate_reason=gate.reason,
           reject_share=gate.reject_share, error=gate.message, active_keys=gate.details.get("active_keys"),
           would_deactivate=gate.details.get("would_deactivate"))
    return {"gate": "failed", "gate_reason": gate.reason, "reject_share": gate.reject_share,
            "top_reasons": run.get("top_reasons") or {}, **gate.details}


@recorded_step("publish")
def publish_window(day: dt.date, run_id: str, settings: Settings, conn: psycopg.Connection | None = None) -> dict:
    """Gate, then publish the run's valid rows to prod, in ONE transaction on the locked run record.

    Refuses (:class:`NotPublishable`) a run that is not validated or not quarantined, whatever ran before
    (a task marked successful in the UI, a cleared publish). On a failed gate nothing is published and
    :class:`GateFailed` names the reason.
    """
    with _connection(settings, conn) as c:
        lock(c)
        run = run_row(c, run_id, settings, for_update=True)
        require_publishable(run)
        _refuse_stale(c, run, settings)
        gate = judge_rejects(run, settings)
        result = publish_rows(c, run, gate, settings) if gate.passed else gate
        if isinstance(result, Gate):
            detail = record_gate_failed(c, run, result, settings)
            c.commit()
            raise GateFailed(result.message, detail)
        c.commit()
    return jsonable(result)


# ------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------


@recorded_step("report")
def report_run(day: dt.date, run_id: str, settings: Settings, conn: psycopg.Connection | None = None) -> dict:
    """The run's summary from ``dqm.dq_runs``.

    Checks that the record adds up: staged = raw rows (the stage compared them per day with the ingest's
    counts, the independent check), and staged = valid + quarantined + superseded (every staged row has
    exactly one status: a consistency check of the record, not a second count).
    """
    with _connection(settings, conn) as c:
        run = run_row(c, run_id, settings)
        c.commit()
    summary = run_summary(run)
    if run["staged"] != run["raw_rows"] or run["staged"] != run["valid"] + run["quarantined"] + run["superseded"]:
        raise ConservationError(f"run {run_id}: the record does not add up (raw_rows {run['raw_rows']}, staged "
                                f"{run['staged']}, valid {run['valid']}, quarantined {run['quarantined']}, "
                                f"superseded {run['superseded']})")
    return summary
