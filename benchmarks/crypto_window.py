"""Benchmark: one `kpi crypto run` over a window of ~1,000,000 raw rows (200,000 a day) vs the bare upsert.

Usage: ``.venv/bin/python benchmarks/crypto_window.py [--rows-per-day 200000] [--days 5]``

Starts its own embedded Postgres (unless ``KPI_DATABASE_URL`` is set), simulates the extracts and
ingests them with the CLI in subprocesses (so this process's peak RSS is the run's), then times in this
process, alternating:
- the full gated run as ``kpi crypto run`` does it (stage, then GE validation in Postgres on its own
  thread beside the quarantine and the publish, whose transaction commits only after validation passed),
  into an empty prod; then the same date again on the prod it wrote (a rerun: nothing changes);
- the same steps one after the other, in the DAG's order, into an empty prod;
- on the same database, the lower bound: one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` of the
  already typed rows, presorted in the order that suits the upsert best, into an empty copy of prod.
Writes ``benchmarks/results/crypto_window.json``.
Targets (issue 2, 2-core machine): ratio <= 3, >= 50,000 rows/s, peak RSS <= 1 GiB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "crypto_window.json"
START = dt.date(2026, 1, 1)

BARE_UPSERT = """
INSERT INTO bench.bt_crypto_events_bare AS p (site_id, user_id, purchase_date, crypto_type, purchase_price,
    purchase_units, purchase_value, is_active, raw_id, last_run_id)
SELECT site_id, user_id, purchase_date, crypto_type, purchase_price, purchase_units, purchase_value, true, raw_id,
       'bare'
FROM bench.typed
ON CONFLICT (site_id, user_id, purchase_date, crypto_type) DO UPDATE
   SET purchase_price = EXCLUDED.purchase_price, purchase_units = EXCLUDED.purchase_units,
       purchase_value = EXCLUDED.purchase_value, is_active = true, updated_at = now()
"""


def _kpi(env: dict, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "kpi.cli", *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"kpi {' '.join(args)} failed: {res.stderr[-2000:]}\n{res.stdout[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--anomaly-rate", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=3, help="full runs and bare upserts, alternating")
    args = parser.parse_args()

    from kpi.db import EmbeddedPostgres, init_db

    work = Path(tempfile.mkdtemp(prefix="kpi-bench-crypto-"))
    work.chmod(0o755)  # the embedded server runs as `postgres`
    pg = None
    url = os.environ.get("KPI_DATABASE_URL")
    if not url:
        pg = EmbeddedPostgres(work / "pg")
        url = pg.start()
    try:
        init_db(url)
        env = {**os.environ, "KPI_DATABASE_URL": url, "KPI_HOME": str(work / "home"),
               "KPI_STORAGE_URL": (work / "storage").as_uri()}
        os.environ.update({k: env[k] for k in ("KPI_DATABASE_URL", "KPI_HOME", "KPI_STORAGE_URL")})
        end = START + dt.timedelta(days=args.days - 1)
        began = time.perf_counter()
        sim = _kpi(env, "crypto", "simulate", "--start", START.isoformat(), "--end", end.isoformat(),
                   "--out", str(work / "src"), "--rows-per-day", str(args.rows_per_day),
                   "--anomaly-rate", str(args.anomaly_rate), "--update-rate", "0", "--delete-rate", "0",
                   "--seed", "1")
        simulate_s = time.perf_counter() - began
        began = time.perf_counter()
        ingested = _kpi(env, "crypto", "ingest", str(work / "src"))
        ingest_s = time.perf_counter() - began

        from kpi.crypto.pipeline import (publish_window, quarantine_rows, report_run, run_window, stage_window,
                                         validate_window)
        from kpi.settings import reload_settings

        import great_expectations  # noqa: F401 - import time is not part of the run
        import psycopg

        settings = reload_settings()

        def settle(conn, *tables: str) -> None:
            # same starting state for both sides: statistics and hint bits set (what autovacuum does after
            # a load), dirty buffers written out
            conn.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")
            conn.execute("CHECKPOINT")

        def sequential(run_id: str) -> dict:
            # the DAG's order, one step after the other (each task of crypto_events calls one of these)
            seconds = {}
            for name, step in (("stage", stage_window), ("validate", validate_window),
                               ("quarantine", quarantine_rows), ("publish", publish_window)):
                began = time.perf_counter()
                step(end, run_id, settings)
                seconds[name] = round(time.perf_counter() - began, 3)
            return {**report_run(end, run_id, settings), "seconds": seconds}

        fulls: list[tuple[float, dict]] = []
        bares: list[tuple[float, int]] = []
        seqs: list[tuple[float, dict]] = []
        reruns: list[tuple[float, dict]] = []
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
            for attempt in range(args.repeat):
                # the DAG-order run, the full run and the bare upsert alternate, so that all see the same load
                conn.execute("TRUNCATE prod.bt_crypto_events, dqm.bt_crypto_events_rejects")
                settle(conn, "raw.bt_crypto_transaction_history", "raw.crypto_ingest_batches",
                       "prod.bt_crypto_events", "dqm.bt_crypto_events_rejects")
                began = time.perf_counter()
                summary = sequential(f"bench-seq-{attempt}")
                seqs.append((time.perf_counter() - began, summary))

                conn.execute("TRUNCATE prod.bt_crypto_events, dqm.bt_crypto_events_rejects")
                settle(conn, "raw.bt_crypto_transaction_history", "raw.crypto_ingest_batches",
                       "prod.bt_crypto_events", "dqm.bt_crypto_events_rejects")
                began = time.perf_counter()
                summary = run_window(end, f"bench-full-{attempt}", settings)
                fulls.append((time.perf_counter() - began, summary))
                # the same date again on the prod it just wrote: the steady state of a rerun (nothing changes)
                settle(conn, "prod.bt_crypto_events", "dqm.bt_crypto_events_rejects")
                began = time.perf_counter()
                rerun = run_window(end, f"bench-rerun-{attempt}", settings)
                reruns.append((time.perf_counter() - began, rerun))

                conn.execute("DROP TABLE IF EXISTS bench.typed, bench.bt_crypto_events_bare")
                conn.execute("CREATE TABLE bench.typed AS SELECT site_id, user_id, purchase_date, crypto_type,"
                             " purchase_price, purchase_units, purchase_value, raw_id"
                             " FROM staging.bt_crypto_events_candidate WHERE run_id = %s AND status = 'valid'"
                             # the most favourable order for the upsert (see publish_upsert.sql): the bare
                             # side gets its sort for free, so it stays a strict lower bound
                             " ORDER BY user_id, purchase_date, site_id, crypto_type",
                             (f"bench-rerun-{attempt}",))
                conn.execute("CREATE TABLE bench.bt_crypto_events_bare (LIKE prod.bt_crypto_events INCLUDING ALL)")
                settle(conn, "bench.typed", "bench.bt_crypto_events_bare")
                began = time.perf_counter()
                bare_rows = conn.execute(BARE_UPSERT).rowcount
                bares.append((time.perf_counter() - began, bare_rows))
            conn.execute("DROP SCHEMA bench CASCADE")
        full_s = statistics.median(t for t, _ in fulls)
        seq_s = statistics.median(t for t, _ in seqs)
        seq_summary = sorted(seqs, key=lambda run: run[0])[len(seqs) // 2][1]
        rerun_s = statistics.median(t for t, _ in reruns)
        rerun_summary = sorted(reruns, key=lambda run: run[0])[len(reruns) // 2][1]
        bare_s = statistics.median(t for t, _ in bares)
        summary = sorted(fulls, key=lambda run: run[0])[len(fulls) // 2][1]  # the median run's steps
        bare_rows = bares[-1][1]
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        raw_rows = summary["raw_rows"]
        result = {
            "benchmark": "crypto_window",
            "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
                        "python": platform.python_version()},
            "window": {"days": args.days, "rows_per_day": args.rows_per_day, "anomaly_rate": args.anomaly_rate},
            "raw_rows": raw_rows,
            "published": summary["published"], "quarantined": summary["quarantined"],
            "superseded": summary["superseded"], "gate": summary["gate"],
            "full_run_seconds": round(full_s, 3),
            "full_run_steps_seconds": summary.get("seconds"),
            "bare_upsert_seconds": round(bare_s, 3),
            "full_run_mode": "kpi crypto run: GE validation on its own thread beside the uncommitted publish",
            "sequential_run_seconds": round(seq_s, 3),
            "sequential_run_steps_seconds": seq_summary.get("seconds"),
            "sequential_ratio_to_bare": round(seq_s / bare_s, 3),
            "sequential_rows_per_second": round(seq_summary["raw_rows"] / seq_s),
            "sequential_run_mode": "the DAG's order: stage, validate, quarantine, publish one after the other",
            "rerun_seconds": round(rerun_s, 3),
            "rerun_changes": {k: rerun_summary[k] for k in ("inserted", "updated", "deactivated", "reactivated")},
            "repeats": {"full_run_seconds": [round(t, 3) for t, _ in fulls],
                        "full_run_steps_seconds": [s.get("seconds") for _, s in fulls],
                        "sequential_run_seconds": [round(t, 3) for t, _ in seqs],
                        "rerun_seconds": [round(t, 3) for t, _ in reruns],
                        "bare_upsert_seconds": [round(t, 3) for t, _ in bares],
                        "ratios": [round(f / b, 3) for (f, _), (b, _) in zip(fulls, bares)],
                        "statistic": "median"},
            "bare_upsert_rows": bare_rows,
            "ratio_full_to_bare": round(full_s / bare_s, 3),
            "rows_per_second": round(raw_rows / full_s),
            "peak_rss_bytes": peak_rss,
            "peak_rss_mib": round(peak_rss / 2**20, 1),
            "simulate_seconds": round(simulate_s, 3),
            "ingest_seconds": round(ingest_s, 3),
            "ingest_rows_per_second": round(ingested["rows"] / ingest_s),
            "simulated_lines": sum(d["lines"] for d in sim["days"]),
            "targets": {"ratio_full_to_bare_max": 3.0, "rows_per_second_min": 50_000, "peak_rss_mib_max": 1024},
        }
        result["meets_targets"] = {
            "ratio": result["ratio_full_to_bare"] <= 3.0,
            "rows_per_second": result["rows_per_second"] >= 50_000,
            "peak_rss": result["peak_rss_mib"] <= 1024,
        }
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return result
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
