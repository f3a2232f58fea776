"""Monitoring page and its data layer on real stores: dqm tables in Postgres, drift reports in storage."""

from __future__ import annotations

import json

import pytest

from .conftest import page_text

RUNS = [
    # run_id, logical_date, status, gate, raw_rows, valid, quarantined, reject_share
    ("run-d1", "2024-03-01", "published", "passed", 100, 98, 2, 0.02),
    ("run-d2", "2024-03-02", "published", "passed", 120, 117, 3, 0.025),
    ("run-d3", "2024-03-03", "gate_failed", "failed", 80, 70, 10, 0.125),
]
REJECTS = [("2024-03-01", "bad_date", 2), ("2024-03-02", "bad_date", 1), ("2024-03-02", "unknown_site", 2),
           ("2024-03-03", "negative_price", 10)]


@pytest.fixture()
def dq_rows(dash_env, dash_db):
    """Three validation runs and their rejected rows written to the test database's dqm tables."""
    from kpi.db import connect

    with connect(dash_db) as conn:
        for run_id, day, status, gate, raw, valid, quarantined, share in RUNS:
            conn.execute(
                "INSERT INTO dqm.dq_runs (run_id, logical_date, window_start, window_end, status, gate, raw_rows,"
                " valid, quarantined, reject_share, reject_threshold, started_at, finished_at) VALUES"
                " (%s, %s, %s::date - 4, %s, %s, %s, %s, %s, %s, %s, 0.05, %s::timestamptz, %s::timestamptz)",
                (run_id, day, day, day, status, gate, raw, valid, quarantined, share, day + " 06:00Z",
                 day + " 06:01Z"),
            )
        raw_id = 0
        for day, reason, count in REJECTS:
            for _ in range(count):
                raw_id += 1
                conn.execute(
                    "INSERT INTO dqm.bt_crypto_events_rejects (raw_id, reason, reasons, run_id, logical_date,"
                    " last_run_id, batch_id, source, line_no, site_id, purchase_date) VALUES"
                    " (%s, %s, ARRAY[%s], 'r', %s, 'r', 1, 'test.csv', %s, 'MARS', '31/2/2024')",
                    (raw_id, reason, reason, day, raw_id + 1),
                )
        conn.commit()
    yield
    with connect(dash_db) as conn:
        conn.execute("TRUNCATE dqm.dq_runs, dqm.bt_crypto_events_rejects")
        conn.commit()


def test_dq_views_count_rejects_per_reason_per_day(dash_env, dq_rows):
    from kpi.dashboard import reports

    settings = dash_env()
    per_day = reports.crypto_rejects_per_reason_day(settings)
    assert list(zip(per_day["day"].astype(str), per_day["reason"], per_day["rejects"], strict=True)) == REJECTS
    assert len(reports.crypto_rejects_per_reason_day(settings, days=1)) == 1  # only the last day
    runs = reports.crypto_dq_runs(settings)
    assert list(runs["run_id"]) == ["run-d3", "run-d2", "run-d1"]  # newest first
    gates = reports.crypto_gate_results(settings)
    assert list(gates["gate"]) == ["passed", "passed", "failed"]
    assert list(gates["outcome"]) == ["published", "published", "gate failed"]


@pytest.fixture()
def troubled_runs(dash_env, dash_db):
    """A run failed by its validate step, one reaped by a later run, one stalled, one still running."""
    from kpi.db import connect

    with connect(dash_db) as conn:
        conn.execute("TRUNCATE dqm.dq_runs")
        for run_id, status, step, finished, error, reaped_by, idle in (
            ("run-failed", "failed", "validate", True, "validate: ValidationFailed: GE and the rules disagree", None, 1),
            ("run-reaped", "failed", "stage", True, "abandoned: unfinished since its stage step", "run-later", 1),
            ("run-stalled", "staged", "stage", False, None, None, 600),
            ("run-running", "validated", "validate", False, None, None, 1),
        ):
            conn.execute(
                "INSERT INTO dqm.dq_runs (run_id, logical_date, window_start, window_end, status, last_step,"
                " last_step_at, started_at, finished_at, error, reaped_by, reject_threshold) VALUES"
                " (%s, '2024-04-01', '2024-03-28', '2024-04-01', %s, %s, now() - make_interval(mins => %s),"
                " now() - make_interval(mins => %s), CASE WHEN %s THEN now() END, %s, %s, 0.05)",
                (run_id, status, step, idle, idle, finished, error, reaped_by))
        conn.commit()
    yield
    with connect(dash_db) as conn:
        conn.execute("TRUNCATE dqm.dq_runs")
        conn.commit()


def test_failed_reaped_and_stalled_runs_are_shown_as_what_they_are(app, dash_env, troubled_runs):
    from kpi.dashboard import reports

    runs = reports.crypto_dq_runs(dash_env())
    assert dict(zip(runs["run_id"], runs["outcome"], strict=True)) == {
        "run-failed": "failed", "run-reaped": "reaped", "run-stalled": "stalled", "run-running": "running"}
    app.run()
    app.switch_page("views/monitoring.py").run()
    assert not app.exception, [e.value for e in app.exception]
    errors = [e.value for e in app.error]
    assert any("run-failed" in e and "failed after its validate step" in e and "disagree" in e for e in errors)
    assert any("run-reaped" in e and "reaped" in e and "abandoned" in e for e in errors)
    assert any("run-stalled" in e and "stalled" in e for e in errors)
    assert not any("run-running" in e for e in errors)


def test_monitoring_page_shows_gate_results_and_rejects(app, dash_env, dq_rows):
    app.run()
    app.switch_page("views/monitoring.py").run()
    assert not app.exception, [e.value for e in app.exception]
    text = page_text(app)
    assert "Outcome: gate failed" in text and "Last run: 2024-03-03" in text and "Reject share: 12.50%" in text
    frames = {getattr(f, "key", None) or i: f.value for i, f in enumerate(app.dataframe)}
    assert any("run-d3" in set(df.get("run_id", [])) for df in frames.values())
    pivot = next(df for df in frames.values() if "negative_price" in df.columns)
    assert int(pivot["negative_price"].sum()) == 10 and int(pivot["bad_date"].sum()) == 3
    assert len(app.get("plotly_chart")) == 2  # gate chart + rejects chart


def test_drift_history_and_latest_report_come_from_storage(app, dash_env, tmp_path):
    """Reports written where the drift job writes them (drift.report_urls) are charted and embedded."""
    import datetime as dt

    from kpi import storage
    from kpi.churn.drift import report_urls
    from kpi.dashboard import reports

    settings = dash_env()
    for day, share in (("2024-05-01", 0.1), ("2024-06-01", 0.5)):
        urls = report_urls(settings, dt.date.fromisoformat(day))
        storage.write_text(urls["json"], json.dumps({"drift_share": share, "drift_detected": share >= 0.3,
                                                     "n_drifted_columns": int(share * 10)}), settings)
        storage.write_text(urls["html"], f"<html><body><h1>Evidently report {day}</h1></body></html>", settings)
    history = reports.drift_history(settings)
    assert list(history["drift_share"]) == [0.1, 0.5]
    assert list(history["drift_detected"]) == [False, True]
    as_of, html = reports.latest_drift_report(settings)
    assert as_of == "2024-06-01" and "Evidently report 2024-06-01" in html

    app.run()
    app.switch_page("views/monitoring.py").run()
    assert not app.exception, [e.value for e in app.exception]
    iframes = app.get("iframe")
    assert iframes and "Evidently report 2024-06-01" in str(iframes[0].proto)
    assert "Share of drifted features" in str(app.get("plotly_chart")[0].proto)
