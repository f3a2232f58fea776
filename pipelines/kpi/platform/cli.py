"""`kpi platform ...`: the local platform (the chart's programs as processes on this machine)."""

from __future__ import annotations

import sys

import typer

from kpi.cli_support import json_command

app = typer.Typer(help="The local platform: the chart's own programs as processes, no cluster needed.",
                  no_args_is_help=True)


@app.command("up")
@json_command
def up(
    ports: str = typer.Option("service", help="service: each Service's own port (8080, 5000, ...); auto: free ports."),
    timeout: float = typer.Option(900, help="Seconds to wait until every component answers its health check."),
    env: str = typer.Option("local", help="Render values-<ENV>.yaml."),
) -> dict:
    """Render values-local.yaml with the real charts, start Postgres, S3, MLflow, Airflow and the dashboard
    from it in the background, return once all are healthy, print the UIs."""
    from kpi.platform.local import DIFFERENCES, summary_lines
    from kpi.platform.local import up as start

    if ports not in ("service", "auto"):
        raise typer.BadParameter("--ports must be service or auto")
    result = start(ports=ports, timeout=timeout, env_name=env)
    for line in summary_lines(result):
        print(line, file=sys.stderr)
    print("Differences from the cluster: " + "; ".join(DIFFERENCES), file=sys.stderr)
    return result


@app.command("down")
@json_command
def down(wipe: bool = typer.Option(False, help="Also delete the state (databases, objects, logs, Secrets).")) -> dict:
    """Stop every process `kpi platform up` started, by PID."""
    from kpi.platform.local import down as stop

    return stop(wipe=wipe)


@app.command("status")
@json_command
def status() -> dict:
    """Which processes of the local platform run, and their URLs."""
    from kpi.platform.local import status as current

    result = current()
    return {**result, "ok": result["all_running"]}
