"""Benchmark: a crypto window of ~1,000,000 raw rows (200,000 a day) against a bare upsert, in one run.

Usage: ``.venv/bin/python benchmarks/crypto_window.py [--rows-per-day 200000] [--days 5] [--repeat 3]``

Starts its own embedded Postgres (unless ``KPI_DATABASE_URL`` is set), simulates the window's daily extracts
and ingests them with ``kpi crypto ingest`` (a process of its own). Then it measures, alternating so that
every side sees the same load:

- **ingest of the 1M-row file**: the five extracts concatenated into one file, ingested by ``kpi crypto
  ingest`` into a scratch database on the same server (rows/s from the ingest's own clock, and from the
  process's wall clock, interpreter start and imports included);
- **the one-shot run** (``kpi crypto run``: GE's validation on its own thread beside the uncommitted publish),
  into an empty prod, in this process;
- **the DAG's step order, a process per step, as on the cluster**: ``ingest_landing``, ``stage``, then
  ``validate`` and ``quarantine`` side by side (as the DAG runs them), ``publish``, ``report``, each a fresh
  Python process calling the step function a DAG task calls, into an empty prod. Each step's time is
  measured inside its process around the call (what the step costs; for the two side by side, the longer
  one counts); the process's wall time (interpreter start, imports, GE's ~10 s import in ``validate``) is
  reported beside it;
- **the bare upsert** (the lower bound): one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` of the already
  typed valid rows, presorted in the order that suits the upsert best, into an empty copy of prod.

Reports medians and every repeat, the peak RSS of this process and of every child, and the load averages.
Writes ``benchmarks/results/crypto_window.json``. Targets (issue 10, 2-core machine): one-shot and DAG order
each <= 3x the bare upsert and >= 50,000 rows/s, ingest >= 200,000 rows/s, peak RSS < 1 GiB.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "crypto_window.json"
START = dt.date(2026, 1, 1)
# the DAG's task order: each group after the one before, the tasks of a group side by side (crypto_events.py)
DAG_ORDER = (("ingest_landing",), ("stage",), ("validate", "quarantine"), ("publish",), ("report",))
TARGETS = {"ratio_to_bare_max": 3.0, "rows_per_second_min": 50_000, "ingest_rows_per_second_min": 200_000,
           "peak_rss_mib_max": 1024}

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

# one DAG task: the step function the task calls, timed inside its own process
STEP_PROCESS = """
import json, sys, time, datetime as dt
began = time.perf_counter()
step, day, run_id = sys.argv[1], dt.date.fromisoformat(sys.argv[2]), sys.argv[3]
if step == "ingest_landing":
    from kpi.crypto.landing import ingest_landing as call
    args = ()
else:
    from kpi.crypto import steps
    call = {"stage": steps.stage_window, "validate": steps.validate_window, "quarantine": steps.quarantine_rows,
            "publish": steps.publish_window, "report": steps.report_run}[step]
    args = (day, run_id)
if step == "validate":
    import great_expectations  # noqa: F401 - an import, not the step's work: counted in the process's time
imported = time.perf_counter()
result = call(*args)
done = time.perf_counter()
print(json.dumps({"seconds": round(done - imported, 3), "startup_seconds": round(imported - began, 3),
                  "result": result}, default=str))
"""


PEAK_RSS: dict[str, int] = {}  # what -> the largest peak RSS (bytes) of a measured child process


def _run(what: str, cmd: list[str], env: dict) -> tuple[dict, float]:
    """Run ``cmd``; its last stdout line is JSON. Returns (that JSON, wall seconds); notes the child's peak RSS.

    The peak comes from GNU time (``/usr/bin/time -f %M``): a child forked from this process would otherwise
    start its count with this process's memory. Without GNU time, no child peak is noted.
    """
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        wrapped = [gnu_time, "-f", "%M", "-o", rss.name, *cmd] if gnu_time else cmd
        began = time.perf_counter()
        res = subprocess.run(wrapped, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - began
        if res.returncode != 0:
            raise RuntimeError(f"{what} failed ({res.returncode}): {res.stderr[-3000:]}\n{res.stdout[-2000:]}")
        peak_kib = rss.read().strip().splitlines()[-1:] if gnu_time else []
    if peak_kib and peak_kib[0].isdigit():
        PEAK_RSS[what] = max(PEAK_RSS.get(what, 0), int(peak_kib[0]) * 1024)
    return json.loads(res.stdout.strip().splitlines()[-1]), wall


def _kpi(env: dict, *args: str) -> tuple[dict, float]:
    return _run(f"kpi {' '.join(args[:2])}", [sys.executable, "-m", "kpi.cli", *args], env)


def _step(env: dict, step: str, day: dt.date, run_id: str) -> dict:
    result, wall = _run(f"step {step}", [sys.executable, "-c", STEP_PROCESS, step, day.isoformat(), run_id], env)
    return {**result, "wall_seconds": round(wall, 3)}


def _median_run(runs: list[tuple[float, dict]]) -> dict:
    return sorted(runs, key=lambda run: run[0])[len(runs) // 2][1]


def _concatenate(files: list[Path], target: Path) -> int:
    """One file with the rows of ``files`` (a single header); returns its rows."""
    rows = 0
    with target.open("wb") as out:
        for index, path in enumerate(files):
            with path.open("rb") as src:
                header = src.readline()
                if index == 0:
                    out.write(header)
                data = src.read()
                rows += data.count(b"\n")
                out.write(data)
    return rows


def _ingest_one_file(url: str, env: dict, source: Path) -> dict:
    """``kpi crypto ingest`` of the 1M-row file into a scratch database of the same server."""
    import psycopg
    from kpi.db import init_db

    scratch = url.rsplit("/", 1)[0] + "/kpi_bench_ingest"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS kpi_bench_ingest")
        conn.execute("CREATE DATABASE kpi_bench_ingest")
    try:
        init_db(scratch)
        summary, wall = _kpi({**env, "KPI_DATABASE_URL": scratch}, "crypto", "ingest", str(source))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS kpi_bench_ingest")
    file = summary["files"][0]
    return {"rows": file["rows"], "seconds": file["seconds"], "cli_wall_seconds": round(wall, 3),
            "rows_per_second": round(file["rows"] / file["seconds"]),
            "cli_rows_per_second": round(file["rows"] / wall)}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--anomaly-rate", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every measurement, alternating")
    args = parser.parse_args()

    from kpi.db import EmbeddedPostgres, init_db

    load_before = [round(x, 2) for x in os.getloadavg()]
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
        sim, simulate_s = _kpi(env, "crypto", "simulate", "--start", START.isoformat(), "--end", end.isoformat(),
                               "--out", str(work / "src"), "--rows-per-day", str(args.rows_per_day),
                               "--anomaly-rate", str(args.anomaly_rate), "--update-rate", "0", "--delete-rate", "0",
                               "--seed", "1")
        window_ingest, window_ingest_s = _kpi(env, "crypto", "ingest", str(work / "src"))
        one_file = work / f"BT_CRYPTO_TRANSACTION_HISTORY_{end.isoformat()}.csv"
        _concatenate(sorted((work / "src").glob("*.csv")), one_file)

        import great_expectations  # noqa: F401 - imported here: its import time is not part of the one-shot run
        import psycopg
        from kpi.crypto.pipeline import run_window
        from kpi.settings import reload_settings

        settings = reload_settings()

        def settle(conn, *tables: str) -> None:
            # same starting state for every side: statistics and hint bits set (what autovacuum does after a
            # load), dirty buffers written out
            conn.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")
            conn.execute("CHECKPOINT")

        def empty_prod(conn) -> None:
            conn.execute("TRUNCATE prod.bt_crypto_events, dqm.bt_crypto_events_rejects")
            settle(conn, "raw.bt_crypto_transaction_history", "raw.crypto_ingest_batches",
                   "prod.bt_crypto_events", "dqm.bt_crypto_events_rejects")

        one_shots: list[tuple[float, dict]] = []
        reruns: list[tuple[float, dict]] = []
        dag_runs: list[tuple[float, dict]] = []
        bares: list[tuple[float, int]] = []
        ingests: list[dict] = []
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
            for attempt in range(args.repeat):
                ingests.append(_ingest_one_file(url, env, one_file))

                empty_prod(conn)
                steps, seconds, wall = {}, 0.0, 0.0
                for group in DAG_ORDER:
                    with ThreadPoolExecutor(len(group)) as pool:  # the tasks of a group run side by side
                        done = dict(zip(group, pool.map(
                            lambda s, run=f"bench-dag-{attempt}": _step(env, s, end, run), group)))
                    steps.update(done)
                    seconds += max(s["seconds"] for s in done.values())
                    wall += max(s["wall_seconds"] for s in done.values())
                dag_runs.append((seconds, {"steps": steps, "summary": steps["report"]["result"], "wall_seconds": wall}))

                empty_prod(conn)
                began = time.perf_counter()
                summary = run_window(end, f"bench-run-{attempt}", settings)
                one_shots.append((time.perf_counter() - began, summary))
                # the same date again on the prod it just wrote: the steady state of a rerun (nothing changes)
                settle(conn, "prod.bt_crypto_events", "dqm.bt_crypto_events_rejects")
                began = time.perf_counter()
                rerun = run_window(end, f"bench-rerun-{attempt}", settings)
                reruns.append((time.perf_counter() - began, rerun))

                conn.execute("DROP TABLE IF EXISTS bench.typed, bench.bt_crypto_events_bare")
                conn.execute("CREATE TABLE bench.typed AS SELECT site_id, user_id, purchase_date, crypto_type,"
                             " purchase_price, purchase_units, purchase_value, raw_id"
                             " FROM staging.bt_crypto_events_candidate WHERE run_id = %s AND status = 'valid'"
                             # the most favourable order for the upsert (see publish_upsert.sql): the bare side
                             # gets its sort for free, so it stays a strict lower bound
                             " ORDER BY user_id, purchase_date, site_id, crypto_type", (f"bench-rerun-{attempt}",))
                conn.execute("CREATE TABLE bench.bt_crypto_events_bare (LIKE prod.bt_crypto_events INCLUDING ALL)")
                settle(conn, "bench.typed", "bench.bt_crypto_events_bare")
                began = time.perf_counter()
                bare_rows = conn.execute(BARE_UPSERT).rowcount
                bares.append((time.perf_counter() - began, bare_rows))
            conn.execute("DROP SCHEMA bench CASCADE")

        bare_s = statistics.median(t for t, _ in bares)
        one_shot_s = statistics.median(t for t, _ in one_shots)
        one_shot = _median_run(one_shots)
        dag_s = statistics.median(t for t, _ in dag_runs)
        dag = _median_run(dag_runs)
        dag_wall_s = statistics.median(run["wall_seconds"] for _, run in dag_runs)
        rerun_s = statistics.median(t for t, _ in reruns)
        rerun = _median_run(reruns)
        ingest = sorted(ingests, key=lambda i: i["seconds"])[len(ingests) // 2]
        raw_rows = one_shot["raw_rows"]
        # the run's processes: this one (the one-shot runs), every DAG step, the ingests (not the simulator)
        measured = {"one-shot runs (this process)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                    **{what: rss for what, rss in PEAK_RSS.items() if what != "kpi crypto simulate"}}
        peak_rss = max(measured.values())
        result = {
            "benchmark": "crypto_window",
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "load_avg_before": load_before,
                        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
                        "python": platform.python_version()},
            "window": {"days": args.days, "rows_per_day": args.rows_per_day, "anomaly_rate": args.anomaly_rate},
            "raw_rows": raw_rows, "published": one_shot["published"], "quarantined": one_shot["quarantined"],
            "superseded": one_shot["superseded"], "gate": one_shot["gate"],
            "bare_upsert_seconds": round(bare_s, 3),
            "bare_upsert_rows": bares[-1][1],
            "one_shot": {
                "mode": "kpi crypto run: GE validation on its own thread beside the uncommitted publish",
                "seconds": round(one_shot_s, 3), "ratio_to_bare": round(one_shot_s / bare_s, 3),
                "rows_per_second": round(raw_rows / one_shot_s), "steps_seconds": one_shot.get("seconds"),
            },
            "dag_order": {
                "mode": "the DAG's task order (validate and quarantine side by side), a Python process per step;"
                        " seconds = each step's own time in its process, wall_seconds = the processes' wall time"
                        " (interpreter start and imports too)",
                "seconds": round(dag_s, 3), "ratio_to_bare": round(dag_s / bare_s, 3),
                "rows_per_second": round(dag["summary"]["raw_rows"] / dag_s),
                "wall_seconds": round(dag_wall_s, 3), "wall_ratio_to_bare": round(dag_wall_s / bare_s, 3),
                "wall_rows_per_second": round(dag["summary"]["raw_rows"] / dag_wall_s),
                "steps": {name: {"seconds": s["seconds"], "startup_seconds": s["startup_seconds"],
                                 "wall_seconds": s["wall_seconds"]} for name, s in dag["steps"].items()},
                "status": dag["summary"]["status"], "published": dag["summary"]["published"],
            },
            "ingest_1m_file": {**ingest, "mode": "kpi crypto ingest of one file holding the whole window"},
            "window_ingest": {"files": len(window_ingest["files"]), "rows": window_ingest["rows"],
                              "cli_wall_seconds": round(window_ingest_s, 3),
                              "seconds": round(sum(f["seconds"] for f in window_ingest["files"]), 3)},
            "rerun_seconds": round(rerun_s, 3),
            "rerun_changes": {k: rerun[k] for k in ("inserted", "updated", "deactivated", "reactivated")},
            "peak_rss_bytes": peak_rss, "peak_rss_mib": round(peak_rss / 2**20, 1),
            "peak_rss_mib_by_process": {what: round(rss / 2**20, 1) for what, rss in measured.items()},
            "simulate_seconds": round(simulate_s, 3),
            "simulated_lines": sum(d["lines"] for d in sim["days"]),
            "repeats": {
                "statistic": "median",
                "one_shot_seconds": [round(t, 3) for t, _ in one_shots],
                "one_shot_steps_seconds": [s.get("seconds") for _, s in one_shots],
                "dag_order_seconds": [round(t, 3) for t, _ in dag_runs],
                "dag_order_wall_seconds": [round(r["wall_seconds"], 3) for _, r in dag_runs],
                "dag_order_steps_seconds": [{n: s["seconds"] for n, s in r["steps"].items()} for _, r in dag_runs],
                "rerun_seconds": [round(t, 3) for t, _ in reruns],
                "bare_upsert_seconds": [round(t, 3) for t, _ in bares],
                "ingest_1m_file_seconds": [i["seconds"] for i in ingests],
                "ingest_1m_file_cli_wall_seconds": [i["cli_wall_seconds"] for i in ingests],
            },
            "targets": TARGETS,
        }
        # the fastest repeat of each side: on a shared machine the least disturbed one (the targets are judged
        # on the medians above)
        best = {"bare_upsert_seconds": min(t for t, _ in bares), "one_shot_seconds": min(t for t, _ in one_shots),
                "dag_order_seconds": min(t for t, _ in dag_runs), "ingest_1m_file_seconds": min(i["seconds"] for i in ingests)}
        result["best_of_repeats"] = {
            **{k: round(v, 3) for k, v in best.items()},
            "one_shot_ratio_to_bare": round(best["one_shot_seconds"] / best["bare_upsert_seconds"], 3),
            "dag_order_ratio_to_bare": round(best["dag_order_seconds"] / best["bare_upsert_seconds"], 3),
            "dag_order_rows_per_second": round(raw_rows / best["dag_order_seconds"]),
            "ingest_1m_file_rows_per_second": round(ingest["rows"] / best["ingest_1m_file_seconds"]),
        }
        result["meets_targets"] = {
            "one_shot_ratio": result["one_shot"]["ratio_to_bare"] <= TARGETS["ratio_to_bare_max"],
            "one_shot_rows_per_second": result["one_shot"]["rows_per_second"] >= TARGETS["rows_per_second_min"],
            "dag_order_ratio": result["dag_order"]["ratio_to_bare"] <= TARGETS["ratio_to_bare_max"],
            "dag_order_rows_per_second": result["dag_order"]["rows_per_second"] >= TARGETS["rows_per_second_min"],
            "ingest_rows_per_second": ingest["rows_per_second"] >= TARGETS["ingest_rows_per_second_min"],
            "peak_rss": result["peak_rss_mib"] < TARGETS["peak_rss_mib_max"],
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
