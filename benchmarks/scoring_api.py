"""Latency and throughput of the scoring API (`kpi churn serve`) under a bounded load from a second process.

The API runs as its own process (the command the chart runs) on 127.0.0.1; this process is the client
(a minimal HTTP/1.1 client on asyncio streams, keep-alive connections). Two phases, on real users' features (the pipeline's own pandas feature
code on simulated sources), SHAP included (the API's default top-k):

- ``single``: open loop, ``--rate`` requests per second (default 200) for ``--seconds`` (default 30), one
  user per request. A request's latency runs from the moment it was *scheduled* to its answer, so time spent
  queueing behind a slow server counts (no coordinated omission). ``rps``: answers per second achieved.
- ``batch_1000``: ``--batches`` requests of 1,000 users each, one after another.

Target: single-user p99 < 20 ms at 200 requests/s with no errors. The machine's load average is recorded
before and after: figures taken on a busy machine say so. ``single.server_cpu_ms_per_request`` is the API
process's own CPU time per answer (from /proc): what a request costs the server, comparable across runs
whatever else the machine was doing.

The champion: ``--url`` of a running API, or ``--home DIR`` (a KPI_HOME whose MLflow store holds one, e.g.
the demo's ``.kpi``); by default the benchmark makes its own in a temporary home with the CLI
(``kpi churn simulate``, ``kpi churn train --in-process``: Spark, one trial of ``--family`` (default ``gbt``,
the family the search promotes on the training benchmark's data; its exact TreeSHAP is the costlier
explanation), about two minutes), so that it runs on a fresh clone.

Run: .venv/bin/python benchmarks/scoring_api.py [--rate 200] [--seconds 30] [--batches 20] [--home .kpi]
     [--family gbt|logistic_regression]
Writes benchmarks/results/scoring_api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from latency import latency_summary

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "scoring_api.json"
KPI = Path(sys.executable).parent / "kpi"
TARGET_P99_MS = 20.0
AS_OF = dt.date(2025, 6, 30)
USERS = 3000
BATCH = 1000
# a keep-alive connection idle longer than this is closed, not reused (uvicorn closes them after 5 s)
IDLE_REUSE_S = 2.0


def kpi(*args: str, env: dict[str, str]) -> dict:
    """Run the project's CLI; its JSON summary (last stdout line), or exit with its error."""
    result = subprocess.run([str(KPI), *args], env=env, capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise SystemExit(f"kpi {' '.join(args)} failed: {result.stdout[-1500:]} {result.stderr[-1500:]}")
    return json.loads(lines[-1])


def home_environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPI_") and k != "MLFLOW_TRACKING_URI"}
    env.update({"KPI_HOME": str(home), "KPI_ENV": "dev", "SPARK_LOCAL_IP": "127.0.0.1",
                "PYSPARK_PYTHON": sys.executable, "PATH": f"{KPI.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    return env


def own_champion(home: Path, family: str) -> tuple[dict[str, str], str]:
    """Simulate sources and train a small ``family`` champion under ``home`` with the CLI; (environment,
    sources)."""
    env = home_environment(home)
    env["KPI_CHURN_MODEL_FAMILIES"] = family
    # a benchmark champion from a few hundred holdout rows: the calibration guardrail is noisy at that size
    env["KPI_CHURN_MAX_CALIBRATION_ERROR"] = "0.25"
    sources = str(home / "sources")
    print(f"training a {family} benchmark champion under {home} (Spark, one trial)...", flush=True)
    kpi("churn", "simulate", "--out", sources, "--users", str(USERS), "--as-of", AS_OF.isoformat(), env=env)
    trained = kpi("churn", "train", "--data", sources, "--as-of", AS_OF.isoformat(), "--trials", "1",
                  "--in-process", env=env)
    if trained.get("champion_version") is None:
        raise SystemExit(f"the benchmark model was not promoted: {trained.get('reason')}")
    return env, sources


def user_features(sources: str | None, env: dict[str, str], url: str) -> list[dict]:
    """Real users' features (simulated sources through the pipeline's feature code) in the model's columns."""
    with urllib.request.urlopen(f"{url}/model", timeout=30) as answer:
        names = list(json.loads(answer.read())["features"])
    if sources is None:
        folder = tempfile.mkdtemp(prefix="kpi-bench-sources-")
        kpi("churn", "simulate", "--out", folder, "--users", str(USERS), "--as-of", AS_OF.isoformat(), env=env)
        sources = folder
    from kpi.churn.features import scoring_set_pandas
    from kpi.settings import Settings

    frame = scoring_set_pandas(sources, AS_OF, Settings(home=Path(env["KPI_HOME"])))
    return json.loads(frame[names].to_json(orient="records", double_precision=15))


def start_server(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(KPI), "churn", "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                health = json.loads(answer.read())
            if health["champion_version"] is None:
                raise SystemExit(f"the API found no champion: {health}")
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"kpi churn serve did not start: {proc.stderr.read()[-2000:]}") from None
            time.sleep(0.5)


class Connection:
    """One keep-alive HTTP/1.1 connection to the API: a request is written whole, its answer read by
    Content-Length. A client this thin keeps the client's own CPU out of the figures (aiohttp costs about
    as much per request as the server does on this path)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def post(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def post_request(host: str, port: int, body: bytes) -> bytes:
    """The bytes of ``POST /score`` with ``body``."""
    return (f"POST /score HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict:
    """``rate`` requests per second for ``seconds``, each scheduled on the clock whatever came back before
    (a free keep-alive connection is taken, or a new one opened). Times are ``time.perf_counter()``: uvloop's
    ``loop.time()`` counts whole milliseconds."""
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    requests = [post_request(host, port, body) for body in bodies]
    count = int(rate * seconds)
    latencies: list[float] = []
    lags: list[float] = []
    errors: list[str] = []
    idle: list[tuple[Connection, float]] = []  # (connection, when it was last used)
    opened = 0
    start = time.perf_counter() + 0.2

    async def connection() -> Connection:
        nonlocal opened
        while idle:
            conn, used = idle.pop()
            if time.perf_counter() - used < IDLE_REUSE_S:
                return conn
            conn.close()  # the server may have closed it (uvicorn's keep-alive is 5 s): never reuse a stale one
        opened += 1
        return await Connection.open(host, port)

    async def one(i: int) -> None:
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        lags.append((time.perf_counter() - scheduled) * 1000)
        try:
            conn = await connection()
            status, _ = await conn.post(requests[i % len(requests)])
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as exc:
            errors.append(type(exc).__name__)
            return
        done = time.perf_counter()
        idle.append((conn, done))
        if status != 200:
            errors.append(f"HTTP {status}")
            return
        latencies.append((done - scheduled) * 1000)

    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - start
    for conn, _ in idle:
        conn.close()
    return {"offered_rps": rate, "seconds": seconds, "requests": count, "answers": len(latencies),
            "rps": round(len(latencies) / elapsed, 1), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "connections_opened": opened, **latency_summary(latencies), "client_lag": latency_summary(lags)}


async def batches(url: str, users: list[dict], count: int, size: int) -> dict:
    """``count`` requests of ``size`` users, one after another, on one connection."""
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    latencies, errors, scored = [], 0, 0
    connection = await Connection.open(host, port)
    try:
        for i in range(count):
            chosen = [{"id": j, "features": users[(i * size + j) % len(users)]} for j in range(size)]
            request = post_request(host, port, json.dumps({"users": chosen}).encode())
            began = time.perf_counter()
            status, payload = await connection.post(request)
            latencies.append((time.perf_counter() - began) * 1000)
            if status != 200 or len(json.loads(payload)["predictions"]) != size:
                errors += 1
            else:
                scored += size
    finally:
        connection.close()
    total_s = sum(latencies) / 1000
    return {"users_per_request": size, "requests": count, "errors": errors,
            "users_per_s": round(scored / total_s, 1) if total_s else None, **latency_summary(latencies)}


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), or None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, TypeError, IndexError):
        return None


def _runner():
    """uvloop's event loop when installed (as the server uses): less client CPU per request."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="latency and throughput of kpi churn serve")
    parser.add_argument("--rate", type=float, default=200.0, help="single-user requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the single-user phase")
    parser.add_argument("--batches", type=int, default=20, help="requests of 1,000 users")
    parser.add_argument("--home", help="KPI_HOME whose MLflow store holds a champion (default: train one)")
    parser.add_argument("--url", help="a running API instead of starting one")
    parser.add_argument("--family", choices=["gbt", "logistic_regression"], default="gbt",
                        help="family of the champion the benchmark trains (default gbt: the family the "
                             "search promotes on the training benchmark's data)")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    proc, sources, scratch = None, None, None
    if args.url:
        url, env = args.url.rstrip("/"), home_environment(Path(args.home or ".kpi").resolve())
    else:
        if args.home:
            env = home_environment(Path(args.home).resolve())
        else:
            scratch = tempfile.TemporaryDirectory(prefix="kpi-bench-scoring-")
            env, sources = own_champion(Path(scratch.name), args.family)
        from kpi.platform.local import free_port

        port = free_port()
        proc = start_server(env, port)
        url = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(f"{url}/model", timeout=30) as answer:
            model = json.loads(answer.read())
        users = user_features(sources, env, url)
        bodies = [json.dumps({"users": [{"id": i, "features": u}]}).encode() for i, u in enumerate(users)]
        run = _runner()
        run(open_loop(url, bodies, args.rate, 3.0))  # warm-up: connections, caches
        server_pid = proc.pid if proc is not None else None
        cpu_before = cpu_seconds(server_pid)
        single = run(open_loop(url, bodies, args.rate, args.seconds))
        cpu_after = cpu_seconds(server_pid)
        # the server's own CPU per answer: what the API costs, whatever else the machine runs
        single["server_cpu_ms_per_request"] = (
            round((cpu_after - cpu_before) * 1000 / single["answers"], 3)
            if cpu_before is not None and cpu_after is not None and single["answers"] else None)
        batch = run(batches(url, users, args.batches, BATCH))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if scratch is not None:
            scratch.cleanup()
    load_after = os.getloadavg()
    single["target_p99_ms"] = TARGET_P99_MS
    single["meets_target"] = single["errors"] == 0 and single.get("p99_ms", 1e9) < TARGET_P99_MS
    result = {
        "benchmark": "scoring API (kpi churn serve): bounded load from a second process on loopback",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "champion": {"name": model["name"], "version": model["version"], "features": len(model["features"]),
                     "family": model.get("family"),
                     "source": "--url" if args.url else ("--home" if args.home else "trained by the benchmark")},
        "shap_top_k": "the API's default (KPI_CHURN_SERVE_TOP_K)",
        "single": single,
        "batch_1000": batch,
        "errors": single["errors"] + batch["errors"],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in load_after],
                    "note": "server and client share the machine's cores"},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"single  offered {args.rate:g}/s for {args.seconds:g}s: {single['rps']} answers/s, p50 "
          f"{single.get('p50_ms')} ms, p99 {single.get('p99_ms')} ms, errors {single['errors']}, server CPU "
          f"{single['server_cpu_ms_per_request']} ms per request")
    print(f"batch   {BATCH} users x {args.batches}: p50 {batch.get('p50_ms')} ms, p99 {batch.get('p99_ms')} ms, "
          f"{batch['users_per_s']} users/s, errors {batch['errors']}")
    print(f"target p99 < {TARGET_P99_MS:g} ms at {args.rate:g}/s with no errors: "
          f"{'met' if single['meets_target'] else 'NOT met'} (load avg before {result['machine']['load_avg_before']}, "
          f"after {result['machine']['load_avg_after']}); wrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
