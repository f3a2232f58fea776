"""`task dashboard`: serve the Streamlit app on 127.0.0.1 against the demo's stores.

Starts the demo's embedded Postgres (``<KPI_HOME>/postgres`` on port 55432, see :mod:`kpi.local`) unless
``KPI_DATABASE_URL`` points elsewhere, runs ``streamlit run dashboard/app.py`` with MLflow and storage on
the same ``KPI_HOME``, and stops Postgres when Streamlit exits (Ctrl-C included).

Usage: ``python -m kpi.dashboard.serve [--port 8501] [--address 127.0.0.1]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[3] / "dashboard" / "app.py"


def streamlit_command(app: Path, address: str, port: int, max_upload_mb: int = 50) -> list[str]:
    """The ``streamlit run`` command line for ``app`` on ``address:port`` (headless, no telemetry).

    ``max_upload_mb`` becomes ``server.maxUploadSize``: the server refuses a bigger upload while it streams
    in, before the page sees it (Streamlit's default is 200 MB).
    """
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", address,
            "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal", "--server.maxUploadSize", str(max_upload_mb)]


def store_environment(settings) -> dict[str, str]:
    """Environment that points the app at the same stores as ``settings`` (absolute, explicit, with secrets)."""
    return settings.store_environment()


def serve(address: str = "127.0.0.1", port: int = 8501) -> int:
    """Run the dashboard until it exits; return Streamlit's exit code."""
    from kpi.local import local_services
    from kpi.redaction import redact_url

    if not (APP.parent / "views").is_dir():
        raise SystemExit(f"dashboard sources not found next to the package ({APP}); run from a checkout")
    with local_services() as settings:
        env = {**os.environ, **store_environment(settings)}
        if not Path(settings.resolved_mlflow_uri.removeprefix("sqlite:///")).exists() and \
                settings.resolved_mlflow_uri.startswith("sqlite:///"):
            print(f"note: no MLflow store at {redact_url(settings.resolved_mlflow_uri)} yet; run `task demo` first "
                  "(the pages say so too)", file=sys.stderr)
        print(f"dashboard: http://{address}:{port}  (stores under {settings.home_dir}; Ctrl-C stops it "
              "and the embedded Postgres)", file=sys.stderr, flush=True)
        proc = subprocess.Popen(streamlit_command(APP, address, port, settings.dashboard_max_upload_mb), env=env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # the terminal's Ctrl-C reached Streamlit too; give it a moment to close, then Postgres stops
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return 0  # stopping on request is a clean exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    args = parser.parse_args(argv)
    return serve(args.address, args.port)


if __name__ == "__main__":
    raise SystemExit(main())
