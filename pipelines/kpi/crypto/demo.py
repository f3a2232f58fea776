"""The crypto part of ``kpi demo``: ten simulated days through the ``crypto_events`` DAG, one table per day.

Each day's extract is dropped into the landing prefix, as the upstream system would, and the DAG run that
fires at 00:00 of the next day ingests it and refreshes the window ending on that day.
"""

from __future__ import annotations

import datetime as dt

from kpi.settings import Settings

DEMO_START = dt.date(2026, 1, 1)
TABLE_COLUMNS = ("day", "raw_rows", "published", "inserted", "updated", "deactivated", "reactivated",
                 "quarantined", "superseded", "reject_share", "gate", "top_reason", "dag_state")
HEADERS = {"raw_rows": "raw", "inserted": "ins", "updated": "upd", "deactivated": "deact", "reactivated": "react",
           "quarantined": "quar", "superseded": "supers", "reject_share": "reject", "top_reason": "top reason",
           "dag_state": "dag"}


def run_crypto_demo(settings: Settings, days: int = 10, rows_per_day: int = 2000, anomaly_rate: float = 0.02,
                    seed: int = 7) -> dict:
    """Simulate ``days`` daily extracts (anomalies, updates, deletions), then for each day D drop its extract
    into ``<storage>/landing/crypto/`` and run the DAG run that fires at 00:00 of D+1 with ``dag.test()``
    (its first task ingests the file, the others refresh the window ending on D); print a table per day.

    Args:
        settings: settings with a reachable warehouse (``local_services()`` provides one).
        days: days to simulate and run.
        rows_per_day: new transactions per day.
        anomaly_rate: share of transactions with an anomaly.
        seed: simulator seed.

    Returns:
        ``{"days": [per-day counts], "prod_active": int, "rejects": int, "dag_runs": [...]}``.
    """
    from rich.console import Console
    from rich.table import Table

    from kpi.airflow_local import activate_airflow_home, prepare_airflow_home, run_dag_once
    from kpi.crypto.landing import landing_url
    from kpi.crypto.queries import sql
    from kpi.crypto.runs import run_row
    from kpi.crypto.simulate import simulate_extracts
    from kpi.db import connect, database_url
    from kpi.storage import join, read_bytes, write_bytes

    console = Console(width=max(200, Console().width))  # the table is wider than a default 80-column pipe
    end = DEMO_START + dt.timedelta(days=days - 1)
    out = join(settings.resolved_storage_url, "crypto", "source")
    console.print(f"[bold]crypto[/bold]: simulating {days} daily extracts ({rows_per_day} new rows/day, "
                  f"anomaly rate {anomaly_rate:.0%}) into {out}")
    simulated = simulate_extracts(DEMO_START, end, out, rows_per_day, anomaly_rate, seed,
                                  window_days=settings.crypto_window_days, settings=settings)
    env = prepare_airflow_home(settings.home_dir / "airflow")
    activate_airflow_home(env)
    rows, dag_runs = [], []
    for day, url in zip(simulated["days"], simulated["files"]):
        logical_date = dt.date.fromisoformat(day["extract_date"])
        write_bytes(join(landing_url(settings), url.rsplit("/", 1)[1]), read_bytes(url, settings), settings)
        # the run firing at 00:00 of D+1 (data interval [D, D+1)) processes the window ending on D
        run = run_dag_once("crypto_events", logical_date + dt.timedelta(days=1))
        dag_runs.append(run)
        landed = run.get("xcom", {}).get("ingest_landing") or {}
        ingested = {"rows": sum(f["rows"] for f in landed.get("ingested", []))}
        with connect(database_url(settings)) as conn:
            try:
                record = run_row(conn, run["run_id"], settings)
            except LookupError:  # the run failed before its stage opened a record
                record = {}
        top = record.get("top_reasons") or {}
        top_reason = max(top.items(), key=lambda kv: (kv[1], kv[0]))[0] if top else ""
        rows.append({
            "day": logical_date.isoformat(), "ingested": ingested["rows"], "dag_state": run["state"],
            "raw_rows": record.get("raw_rows"), "published": record.get("published"),
            "inserted": record.get("inserted"), "updated": record.get("updated"),
            "deactivated": record.get("deactivated"), "reactivated": record.get("reactivated"),
            "quarantined": record.get("quarantined"), "superseded": record.get("superseded"),
            "reject_share": round(record.get("reject_share") or 0.0, 4), "gate": record.get("gate"),
            "top_reason": top_reason,
        })
        table = Table(title=f"crypto_events {logical_date} (DAG run {run['state']})", show_lines=False)
        for col in TABLE_COLUMNS:
            table.add_column(HEADERS.get(col, col), justify="left" if col in ("day", "gate", "top_reason", "dag_state") else "right")
        table.add_row(*(_cell(rows[-1][c]) for c in TABLE_COLUMNS))
        console.print(table)
    with connect(database_url(settings)) as conn:
        active_keys, all_keys, rejects = conn.execute(sql("demo:totals", settings)).fetchone()
    summary = Table(title="crypto: all days")
    for col in TABLE_COLUMNS:
        summary.add_column(HEADERS.get(col, col), justify="left" if col in ("day", "gate", "top_reason", "dag_state") else "right")
    for row in rows:
        summary.add_row(*(_cell(row[c]) for c in TABLE_COLUMNS))
    console.print(summary)
    console.print(f"prod.bt_crypto_events: {active_keys} active of {all_keys} keys; "
                  f"dqm.bt_crypto_events_rejects: {rejects} rows")
    return {"days": rows, "prod_active": active_keys, "prod_keys": all_keys, "rejects": rejects,
            "failed_runs": [r["run_id"] for r in dag_runs if "success" not in r["state"]],
            "anomaly_kinds": simulated["anomaly_kinds"]}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2%}"
    return "" if value is None else str(value).removeprefix("DagRunState.")
