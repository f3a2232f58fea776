"""`kpi crypto run` on the real Postgres: conservation, idempotence, deletions, backfills, gate, crash safety."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from kpi.db import connect

from tests.crypto.conftest import clean_crypto_tables, dmy, prod_snapshot, query, write_extract

DAY = dt.date(2026, 1, 1)


def _day(n: int) -> dt.date:
    return DAY + dt.timedelta(days=n)


def _simulate_and_ingest(settings, tmp_path, days: int, **kwargs) -> list[str]:
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.simulate import simulate_extracts

    sim = simulate_extracts(DAY, _day(days - 1), str(tmp_path / "src"), settings=settings, **kwargs)
    for url in sim["files"]:
        ingest_file(url, settings=settings)
    return sim["files"]


def _kpi(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kpi.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def test_conservation_and_a_rerun_changes_nothing(crypto_env, tmp_path):
    from kpi.crypto.pipeline import run_window

    _simulate_and_ingest(crypto_env, tmp_path, 3, rows_per_day=300, anomaly_rate=0.03, seed=11)
    first = run_window(_day(2), settings=crypto_env)
    assert first["gate"] == "passed" and first["status"] == "published"
    assert first["raw_rows"] == first["published"] + first["quarantined"] + first["superseded"]
    assert first["quarantined"] > 0 and first["superseded"] > 0 and first["inserted"] == first["published"]
    raw = query(crypto_env.database_url, "SELECT count(*) FROM raw.bt_crypto_transaction_history")[0][0]
    assert first["raw_rows"] == raw  # the window holds every ingested row here
    assert query(crypto_env.database_url, "SELECT count(*) FROM prod.bt_crypto_events")[0][0] == first["published"]
    assert query(crypto_env.database_url, "SELECT count(*) FROM dqm.bt_crypto_events_rejects")[0][0] == first[
        "quarantined"]
    before = prod_snapshot(crypto_env.database_url)

    again = run_window(_day(2), settings=crypto_env)
    assert (again["inserted"], again["updated"], again["deactivated"]) == (0, 0, 0)
    assert again["unchanged"] == first["published"]
    assert prod_snapshot(crypto_env.database_url) == before  # not even updated_at moved
    assert query(crypto_env.database_url, "SELECT count(*) FROM dqm.bt_crypto_events_rejects")[0][0] == first[
        "quarantined"]
    runs = query(crypto_env.database_url, "SELECT run_id, raw_rows, valid, quarantined, superseded, gate,"
                 " data_docs_url FROM dqm.dq_runs WHERE logical_date = %s", (_day(2),))
    assert len(runs) == 2 and {r[5] for r in runs} == {"passed"}
    docs = runs[0][6]
    assert docs.startswith(crypto_env.resolved_storage_url) and os.path.exists(docs.removeprefix("file://"))


def test_deleted_keys_are_deactivated_and_come_back_when_the_source_has_them_again(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window

    # one of three keys is a third of the day: above the default deactivation guard of 20 %
    crypto_env = crypto_env.model_copy(update={"crypto_max_deactivation_share": 0.5})

    d0 = dmy(_day(0))
    rows = {k: f"ARGENTINA,{k},{d0},BTC,100,1" for k in (1, 2, 3)}
    ingest_file(str(write_extract(tmp_path / "a", _day(0), list(rows.values()))), settings=crypto_env)
    assert run_window(_day(0), settings=crypto_env)["inserted"] == 3
    # the next extract re-sends day 0 without user 2 (deleted) and with user 3 updated
    resent = [rows[1], f"ARGENTINA,3,{d0},BTC,100,2", f"ARGENTINA,9,{dmy(_day(1))},ETH,10,1"]
    ingest_file(str(write_extract(tmp_path / "b", _day(1), resent)), settings=crypto_env)
    second = run_window(_day(1), settings=crypto_env)
    assert (second["inserted"], second["updated"], second["deactivated"]) == (1, 1, 1)
    state = dict(query(crypto_env.database_url, "SELECT user_id, is_active FROM prod.bt_crypto_events"))
    assert state == {1: True, 2: False, 3: True, 9: True}
    value = query(crypto_env.database_url, "SELECT purchase_value FROM prod.bt_crypto_events WHERE user_id = 3")
    assert float(value[0][0]) == 200.0
    # user 2 comes back
    ingest_file(str(write_extract(tmp_path / "c", _day(2), [*resent[:2], rows[2]])), settings=crypto_env)
    third = run_window(_day(2), settings=crypto_env)
    assert third["reactivated"] == 1 and third["updated"] == 1 and third["deactivated"] == 0
    assert dict(query(crypto_env.database_url, "SELECT user_id, is_active FROM prod.bt_crypto_events")) == {
        1: True, 2: True, 3: True, 9: True}


def test_backfills_in_any_order_reach_the_same_prod(crypto_env, tmp_path):
    from kpi.crypto.pipeline import run_window

    _simulate_and_ingest(crypto_env, tmp_path, 4, rows_per_day=200, anomaly_rate=0.02, seed=5,
                         update_rate=0.1, delete_rate=0.05)

    def values():
        return query(crypto_env.database_url, "SELECT site_id, user_id, purchase_date, crypto_type, purchase_price,"
                     " purchase_units, purchase_value, is_active FROM prod.bt_crypto_events ORDER BY 1, 2, 3, 4")

    for day in (0, 1, 2, 3):
        run_window(_day(day), settings=crypto_env)
    in_order = values()
    with connect(crypto_env.database_url) as conn:
        conn.execute("TRUNCATE prod.bt_crypto_events")
    for day in (3, 1, 0, 2, 3):
        run_window(_day(day), settings=crypto_env)
    assert values() == in_order and len(in_order) > 500


def test_a_failed_gate_publishes_nothing_and_names_the_top_reasons(crypto_env, tmp_path, monkeypatch):
    from kpi.crypto.pipeline import run_window

    _simulate_and_ingest(crypto_env, tmp_path, 2, rows_per_day=200, anomaly_rate=0.02, seed=2)
    run_window(_day(0), settings=crypto_env)
    before = prod_snapshot(crypto_env.database_url)
    assert before
    env = {**os.environ, "KPI_CRYPTO_REJECT_THRESHOLD": "0.001"}
    res = _kpi("crypto", "run", "--date", _day(1).isoformat(), env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["gate"] == "failed" and "gate failed" in summary["error"]
    assert summary["published"] == 0 and summary["valid"] > 0  # valid rows, but none reached prod
    top = next(iter(summary["top_reasons"]))
    assert top in summary["error"] and summary["quarantined"] > 0
    assert prod_snapshot(crypto_env.database_url) == before
    status = query(crypto_env.database_url, "SELECT status, gate FROM dqm.dq_runs WHERE run_id = %s",
                   (summary["run_id"],))
    assert status == [("gate_failed", "failed")]


def test_cli_simulate_ingest_run_print_json_summaries(crypto_env, tmp_path):
    env = dict(os.environ)
    out = tmp_path / "cli"
    sim = _kpi("crypto", "simulate", "--start", "2026-01-01", "--end", "2026-01-02", "--out", str(out),
               "--rows-per-day", "100", "--anomaly-rate", "0.02", "--seed", "9", env=env)
    assert sim.returncode == 0, sim.stderr
    assert len(json.loads(sim.stdout.strip().splitlines()[-1])["files"]) == 2
    ing = _kpi("crypto", "ingest", str(out), env=env)
    assert ing.returncode == 0, ing.stderr
    ingested = json.loads(ing.stdout.strip().splitlines()[-1])
    assert ingested["ok"] and len(ingested["files"]) == 2 and ingested["skipped_duplicates"] == 0
    run = _kpi("crypto", "run", "--date", "2026-01-02", env=env)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    for key in ("raw_rows", "staged", "inserted", "updated", "deactivated", "quarantined", "superseded", "gate"):
        assert key in summary
    assert summary["raw_rows"] == summary["published"] + summary["quarantined"] + summary["superseded"]
    bad = _kpi("crypto", "run", "--date", "2026-13-01", env=env)
    assert bad.returncode != 0 and "YYYY-MM-DD" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_a_run_killed_in_the_middle_of_publish_leaves_prod_as_it_was_and_is_reaped(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window

    d0 = dmy(_day(0))
    ingest_file(str(write_extract(tmp_path / "a", _day(0), [f"BRASIL,{u},{d0},BTC,100,1" for u in range(1, 201)])),
                settings=crypto_env)
    run_window(_day(0), settings=crypto_env)
    before = prod_snapshot(crypto_env.database_url)
    # a new extract changes every row (and drops a few): publish must update the row we lock below
    ingest_file(str(write_extract(tmp_path / "b", _day(1), [f"BRASIL,{u},{d0},BTC,101,1" for u in range(1, 181)])),
                settings=crypto_env)
    blocker = connect(crypto_env.database_url)
    blocker.execute("SELECT 1 FROM prod.bt_crypto_events WHERE user_id = 100 FOR UPDATE")
    proc = subprocess.Popen([sys.executable, "-m", "kpi.cli", "crypto", "run", "--date", _day(1).isoformat()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        waiting = None
        deadline = time.monotonic() + 300
        while waiting is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            found = query(crypto_env.database_url,
                          "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                          " AND (query LIKE '%%INSERT INTO prod.bt_crypto_events%%'"
                          "      OR query LIKE '%%UPDATE prod.bt_crypto_events%%')")
            waiting = found[0][0] if found else None
            time.sleep(0.2)
        assert waiting is not None, "publish never reached the locked row"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
    deadline = time.monotonic() + 60
    while query(crypto_env.database_url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (waiting,)):
        assert time.monotonic() < deadline, "the killed run's backend never ended"
        time.sleep(0.2)
    assert prod_snapshot(crypto_env.database_url) == before
    killed = query(crypto_env.database_url, "SELECT run_id, status, finished_at FROM dqm.dq_runs"
                   " WHERE logical_date = %s", (_day(1),))
    assert len(killed) == 1 and killed[0][1] == "staged" and killed[0][2] is None  # nobody could record the kill
    killed_id = killed[0][0]
    assert query(crypto_env.database_url, "SELECT count(*) FROM staging.bt_crypto_events_candidate"
                 " WHERE run_id = %s", (killed_id,))[0][0] == 380  # both extracts of day 0
    # the next run reaps the killed one (its staging rows freed) and repairs everything
    repair = run_window(_day(1), settings=crypto_env)
    assert repair["updated"] == 180 and repair["deactivated"] == 20
    reaped = query(crypto_env.database_url, "SELECT status, reaped_by, error, staging_freed_at IS NOT NULL"
                   " FROM dqm.dq_runs WHERE run_id = %s", (killed_id,))[0]
    assert reaped[:2] == ("failed", repair["run_id"]) and "abandoned" in reaped[2] and reaped[3] is True
    assert query(crypto_env.database_url, "SELECT count(*) FROM staging.bt_crypto_events_candidate"
                 " WHERE run_id = %s", (killed_id,))[0][0] == 0
    clean_crypto_tables(crypto_env.database_url)
