"""Peak memory of a batch upload just under the cap, scored as the dashboard's batch page scores it.

A feature-shaped CSV of ``--mb`` MB (default: 1 MB under ``KPI_DASHBOARD_MAX_UPLOAD_MB``, i.e. 49 MB) with
users drawn inside the champion's training ranges and 1 % of rows unscorable (text in a numeric column) is
scored by ``kpi.dashboard.scoring.score_upload`` in a fresh process per mode:

- ``chunked``: what the page does now (rows parsed, checked and scored ``UploadLimits.chunk_rows`` at a time);
- ``whole_file``: the same code with one chunk as large as the file: what reading it whole costs (the page
  did that before, and also copied the bytes and built one dict per row);
- ``sources`` (``--sources-users N``, default 30,000): the five source CSVs simulated for N users (PAYMENTS.csv
  is then about 45 MB, the largest), features built as of the simulation date and scored: the path that
  cannot be chunked (a user's features need all of that user's rows).

Each process holds the file's bytes in memory first (Streamlit keeps an upload in memory), then resets its
peak-RSS counter (``/proc/self/clear_refs``) so that ``scoring_peak_rss_mib`` is what scoring adds on top of the
loaded model and the upload; ``process_peak_rss_mib`` is the whole process's peak.

The champion comes from the settings' MLflow store (the demo's, under ``.kpi``; run `task demo` first) or from
``--home DIR`` (a KPI_HOME whose ``mlflow.db`` holds one).

Run: .venv/bin/python benchmarks/dashboard_upload.py [--mb 49] [--home .kpi]
Writes benchmarks/results/dashboard_upload.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "dashboard_upload.json"
BAD_SHARE = 0.01

CHILD = """
import datetime as dt, io, json, resource, sys, time
from pathlib import Path
from kpi.churn.registry import load_champion
from kpi.dashboard.scoring import UploadLimits, form_fields, score_upload
from kpi.settings import get_settings

def rss_mib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)

settings = get_settings()
champ = load_champion(settings)
fields = form_fields(champ.model.input_schema())
source = Path(sys.argv[1])
# Streamlit's UploadedFile is a BytesIO over the uploaded bytes
if source.is_dir():
    files = {p.name: io.BytesIO(p.read_bytes()) for p in sorted(source.glob("*.csv")) if p.name != "OUTCOMES.csv"}
else:
    files = {"users.csv": io.BytesIO(source.read_bytes())}
limits = UploadLimits.from_settings(settings)
limits = UploadLimits(limits.max_mb, limits.max_rows, int(sys.argv[2]))
cutoff = dt.date.fromisoformat(sys.argv[3]) if len(sys.argv) > 3 else None
baseline = rss_mib("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # peak RSS (VmHWM) starts again from here
started = time.perf_counter()
result = score_upload(champ.model, fields, files, cutoff, limits=limits)
seconds = time.perf_counter() - started
print(json.dumps({
    "problems": result.problems, "scored": len(result.scored), "rejected": len(result.rejected),
    "seconds": round(seconds, 2), "baseline_rss_mib": baseline,
    "scoring_peak_rss_mib": round(rss_mib("VmHWM") - baseline, 1),
    "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "chunk_rows": limits.chunk_rows,
}))
"""


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def write_upload(path: Path, fields, target_bytes: int, seed: int = 11) -> dict:
    """A feature-shaped CSV of about ``target_bytes`` (never more), users inside the training ranges."""
    import numpy as np
    import pandas as pd
    from kpi.dashboard.scoring import ID

    rng = np.random.default_rng(seed)

    def frame(rows: int, first_id: int) -> pd.DataFrame:
        data = {ID: np.arange(first_id, first_id + rows)}
        for f in fields:
            if f.kind == "category":
                data[f.name] = rng.choice(list(f.categories) or ["x"], size=rows)
            else:
                lo = f.minimum if f.minimum is not None else 0.0
                hi = f.maximum if f.maximum is not None else lo + 1.0
                values = rng.uniform(lo, hi, size=rows)
                data[f.name] = np.round(values) if f.kind == "int" else np.round(values, 4)
        df = pd.DataFrame(data)
        numeric = next(f.name for f in fields if f.kind != "category")
        bad = rng.random(rows) < BAD_SHARE
        df[numeric] = df[numeric].astype(object)
        df.loc[bad, numeric] = "n/a"
        return df

    rows = written = 0
    with open(path, "wb") as fh:
        while True:
            part = frame(20_000, rows).to_csv(index=False, header=rows == 0).encode()
            if written + len(part) > target_bytes:  # the last part: as many whole lines as still fit
                lines = part.splitlines(keepends=True)
                room = target_bytes - written
                fits = []
                for line in lines:
                    if len(line) > room:
                        break
                    fits.append(line)
                    room -= len(line)
                fh.write(b"".join(fits))
                written += sum(map(len, fits))
                rows += len(fits) - (1 if rows == 0 else 0)
                break
            fh.write(part)
            written += len(part)
            rows += 20_000
    return {"rows": rows, "bytes": written, "mib": round(written / 1024 / 1024, 2)}


def run_mode(path: Path, chunk_rows: int, env: dict, *extra: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), str(chunk_rows), *extra], capture_output=True,
                         text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"scoring process failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="peak RSS of a batch upload just under the cap")
    parser.add_argument("--mb", type=float, help="upload size in MB (default: the cap minus 1)")
    parser.add_argument("--home", help="KPI_HOME holding the MLflow store (default: the settings')")
    parser.add_argument("--skip-whole-file", action="store_true", help="only the chunked mode")
    parser.add_argument("--sources-users", type=int, default=30_000,
                        help="users of the source-shaped upload (0: skip that mode)")
    args = parser.parse_args(argv)

    from dashboard_latency import champion_of  # this script's folder is on sys.path
    from kpi.dashboard.scoring import UploadLimits, form_fields

    settings, champ, _ = champion_of(args.home)
    limits = UploadLimits.from_settings(settings)
    target_mb = args.mb or limits.max_mb - 1
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="kpi-bench-upload-") as tmp:
        path = Path(tmp) / "users.csv"
        upload = write_upload(path, form_fields(champ.model.input_schema()), int(target_mb * 1024 * 1024))
        env = {**os.environ, **settings.store_environment()}
        modes = {"chunked": run_mode(path, limits.chunk_rows, env)}
        if not args.skip_whole_file:
            modes["whole_file"] = run_mode(path, 10**9, env)
        if args.sources_users:
            from kpi.churn.simulate import simulate_sources

            folder = Path(tmp) / "sources"
            as_of = dt.date(2024, 7, 1)
            simulate_sources(str(folder), users=args.sources_users, as_of=as_of, seed=5)
            sizes = {p.name: round(p.stat().st_size / 1024 / 1024, 2) for p in sorted(folder.glob("*.csv"))
                     if p.name != "OUTCOMES.csv"}
            modes["sources"] = {"users": args.sources_users, "file_mib": sizes,
                                **run_mode(folder, limits.chunk_rows, env, as_of.isoformat())}
    result = {
        "benchmark": "dashboard batch upload: peak memory of scoring one feature-shaped CSV under the cap",
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": load_before, "loadavg_after": loadavg()},
        "champion": {"name": settings.churn_model_name, "version": champ.version,
                     "features": len(champ.model.feature_names)},
        "limits": {"max_mb": limits.max_mb, "max_rows": limits.max_rows, "chunk_rows": limits.chunk_rows},
        "upload": {**upload, "unscorable_share": BAD_SHARE},
        "modes": modes,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
