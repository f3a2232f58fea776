"""The crypto_events DAG runs for a logical date with Airflow's own dag.test() against the real Postgres."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.crypto.conftest import clean_crypto_tables, query


@pytest.mark.slow
def test_dag_run_publishes_the_window_and_records_the_run(airflow_home, kpi_env, tmp_path):
    from kpi.airflow_local import run_dag_once
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.simulate import simulate_extracts

    clean_crypto_tables(kpi_env.database_url)
    sim = simulate_extracts(dt.date(2026, 1, 1), dt.date(2026, 1, 2), str(tmp_path / "src"), rows_per_day=150,
                            anomaly_rate=0.02, seed=21, settings=kpi_env)
    for url in sim["files"]:
        ingest_file(url, settings=kpi_env)
    run = run_dag_once("crypto_events", dt.date(2026, 1, 2))
    assert run["state"].endswith("success"), run
    assert set(run["tasks"].values()) == {"success"} or all(s.endswith("success") for s in run["tasks"].values())
    runs = query(kpi_env.database_url, "SELECT status, gate, raw_rows, valid, quarantined, superseded, inserted"
                 " FROM dqm.dq_runs WHERE run_id = %s", (run["run_id"],))
    assert len(runs) == 1
    status, gate, raw_rows, valid, quarantined, superseded, inserted = runs[0]
    assert (status, gate) == ("published", "passed")
    assert raw_rows == valid + quarantined + superseded and inserted == valid > 0
    prod = query(kpi_env.database_url, "SELECT count(*), min(purchase_date), max(purchase_date), bool_and(is_active),"
                 " min(last_run_id) FROM prod.bt_crypto_events")[0]
    assert prod[0] == valid and prod[1] >= dt.date(2025, 12, 29) and prod[2] <= dt.date(2026, 1, 2)
    assert prod[3] is True and prod[4] == run["run_id"]
    clean_crypto_tables(kpi_env.database_url)
