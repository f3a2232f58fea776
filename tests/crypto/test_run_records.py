"""Honest run records: every failing step says so in dqm.dq_runs, abandoned runs are reaped, counts add up."""

from __future__ import annotations

import datetime as dt

import pytest
from kpi.db import connect

from tests.crypto.conftest import dmy, prod_snapshot, query, write_extract

D = dt.date(2026, 7, 1)


def _ingest(settings, tmp_path, price: int = 1, users: int = 30, day: dt.date = D) -> None:
    from kpi.crypto.ingest import ingest_file

    rows = [f"MEXICO,{u},{dmy(D)},USDT,{price},1" for u in range(1, users + 1)] + [f"MEXICO,x,{dmy(D)},USDT,1,1"]
    ingest_file(str(write_extract(tmp_path / f"{price}-{day}", day, rows)), settings=settings)


def _record(url, run_id: str) -> dict:
    with connect(url) as conn:
        cur = conn.execute("SELECT * FROM dqm.dq_runs WHERE run_id = %s", (run_id,))
        row = cur.fetchone()
        return dict(zip([c.name for c in cur.description], row, strict=True)) if row else {}


BROKEN_STATEMENT = {"stage": "stage_window", "quarantine": "quarantine", "publish": "publish_upsert:insert"}


@pytest.mark.parametrize("failing", ["stage", "validate", "quarantine", "publish", "report"])
def test_a_failing_step_marks_its_run_failed_with_its_error(crypto_env, tmp_path, monkeypatch, failing):
    from kpi.crypto import queries, steps, validation

    run_id = f"broken-{failing}"
    _ingest(crypto_env, tmp_path)
    real_sql = queries.sql
    if failing in BROKEN_STATEMENT:
        monkeypatch.setattr(steps, "sql", lambda name, settings=None: "SELECT 1/0" if name == BROKEN_STATEMENT[failing]
                            else real_sql(name, settings))
    elif failing == "validate":
        def unreachable(*args):
            raise ConnectionError("validation store unreachable")

        monkeypatch.setattr(validation, "run_expectations", unreachable)
    else:
        def broken_summary(run):
            raise KeyError("summary field")

        monkeypatch.setattr(steps, "run_summary", broken_summary)
    before = prod_snapshot(crypto_env.database_url)
    with pytest.raises(Exception):  # noqa: B017 - each step fails its own way; the record is the point
        for step in (steps.stage_window, steps.validate_window, steps.quarantine_rows, steps.publish_window,
                     steps.report_run):
            step(D, run_id, crypto_env)
    record = _record(crypto_env.database_url, run_id)
    assert record["last_step"] == failing and record["finished_at"] is not None
    assert record["error"].startswith(f"{failing}: ")
    if failing == "report":  # the publish went through: the record keeps that, plus the report's error
        assert record["status"] == "published" and "summary field" in record["error"]
    else:
        assert record["status"] == "failed" and prod_snapshot(crypto_env.database_url) == before


def test_a_sibling_step_s_success_does_not_hide_the_other_s_failure(crypto_env, tmp_path, monkeypatch):
    """validate and quarantine run side by side in the DAG, in either order: the one that succeeds must not
    clear the other's failure from the record; only a retry of the failed step does."""
    from kpi.crypto import validation
    from kpi.crypto.steps import ValidationFailed, quarantine_rows, stage_window, validate_window

    _ingest(crypto_env, tmp_path)
    real = validation.run_expectations

    def disagreeing(settings, run_id, day):
        outcome = real(settings, run_id, day)
        outcome["unexpected"]["site_id_unknown"] = outcome["unexpected"].get("site_id_unknown", 0) + 1
        return outcome

    for run_id, quarantine_first in (("validate-then-quarantine", False), ("quarantine-then-validate", True)):
        stage_window(D, run_id, crypto_env)
        if quarantine_first:
            quarantine_rows(D, run_id, crypto_env)
        with monkeypatch.context() as patch:
            patch.setattr(validation, "run_expectations", disagreeing)
            with pytest.raises(ValidationFailed, match="disagree"):
                validate_window(D, run_id, crypto_env)
        if not quarantine_first:
            quarantine_rows(D, run_id, crypto_env)
        record = _record(crypto_env.database_url, run_id)
        assert (record["status"], record["validation"], record["rejects_recorded"]) == ("failed", "failed", 1), run_id
        assert record["error"].startswith("validate: ValidationFailed: GE and the row-level rules disagree"), run_id
        assert record["finished_at"] is not None, run_id
    # a retry of the step that failed clears its failure (the latest run: staging the second freed the first's rows)
    validate_window(D, "quarantine-then-validate", crypto_env)
    record = _record(crypto_env.database_url, "quarantine-then-validate")
    assert (record["status"], record["validation"], record["error"], record["finished_at"]) == (
        "validated", "passed", None, None)


def test_an_abandoned_step_by_step_run_is_reaped_and_its_staging_rows_freed(crypto_env, tmp_path):
    from kpi.crypto.steps import StagingUnavailable, stage_window, validate_window

    _ingest(crypto_env, tmp_path)
    stage_window(D, "abandoned", crypto_env)
    stage_window(D, "in-flight", crypto_env)
    # the abandoned run's last step was two hours ago (its task pod was lost); the other one is still going
    with connect(crypto_env.database_url) as conn:
        conn.execute("UPDATE dqm.dq_runs SET last_step_at = now() - interval '2 hours' WHERE run_id = 'abandoned'")
    staged = "SELECT run_id, count(*) FROM staging.bt_crypto_events_candidate GROUP BY 1 ORDER BY 1"
    assert query(crypto_env.database_url, staged) == [("abandoned", 31), ("in-flight", 31)]
    summary = stage_window(D, "next", crypto_env)
    assert list(summary["reaped"]) == ["abandoned"]
    reaped = _record(crypto_env.database_url, "abandoned")
    assert (reaped["status"], reaped["reaped_by"]) == ("failed", "next")
    assert "abandoned: unfinished since its stage step" in reaped["error"]
    assert reaped["staging_freed_at"] is not None
    assert query(crypto_env.database_url, staged) == [("in-flight", 31), ("next", 31)]
    assert _record(crypto_env.database_url, "in-flight")["status"] == "staged"
    with pytest.raises(StagingUnavailable, match="freed .* by run next"):
        validate_window(D, "abandoned", crypto_env)


def test_a_task_that_died_without_its_step_noticing_is_recorded_by_the_callback(crypto_env, tmp_path):
    from kpi.crypto.pipeline import record_task_failure
    from kpi.crypto.steps import stage_window

    class TaskInstance:
        task_id = "validate"

    _ingest(crypto_env, tmp_path)
    stage_window(D, "killed-task", crypto_env)
    record_task_failure({"run_id": "killed-task", "ti": TaskInstance(), "exception": None})
    record = _record(crypto_env.database_url, "killed-task")
    assert record["status"] == "failed" and record["error"].startswith("validate: RuntimeError: the task failed")
    # a step that recorded its own failure keeps its error
    with connect(crypto_env.database_url) as conn:
        conn.execute("UPDATE dqm.dq_runs SET error = 'publish: the real reason' WHERE run_id = 'killed-task'")
    record_task_failure({"run_id": "killed-task", "ti": TaskInstance(), "exception": RuntimeError("later")})
    assert _record(crypto_env.database_url, "killed-task")["error"] == "publish: the real reason"
    record_task_failure({"run_id": "no-such-run", "ti": TaskInstance()})  # no record: nothing to do, no error


def test_the_stage_checks_its_rows_against_what_the_ingest_counted(crypto_env, tmp_path):
    from kpi.crypto.steps import ConservationError, stage_window

    _ingest(crypto_env, tmp_path)
    # a raw row goes missing after the ingest counted it (counting raw again, as before, could not notice)
    with connect(crypto_env.database_url) as conn:
        conn.execute("DELETE FROM raw.bt_crypto_transaction_history WHERE line_no = 5")
    with pytest.raises(ConservationError, match=r"'2026-07-01': \(31, 30\)"):
        stage_window(D, "lost-row", crypto_env)
    assert _record(crypto_env.database_url, "lost-row")["status"] == "failed"


def test_a_failed_gate_publishes_nothing_and_says_so_in_its_counts(crypto_env, tmp_path):
    from kpi.crypto.pipeline import run_window

    _ingest(crypto_env, tmp_path)
    strict = crypto_env.model_copy(update={"crypto_reject_threshold": 0.0})
    summary = run_window(D, settings=strict)
    assert summary["ok"] is False and summary["status"] == "gate_failed" and summary["gate_reason"] == "reject_share"
    assert summary["valid"] == 30 and summary["published"] == 0 and summary["inserted"] is None
    assert summary["raw_rows"] == summary["valid"] + summary["quarantined"] + summary["superseded"]
    assert _record(crypto_env.database_url, summary["run_id"])["published"] == 0
