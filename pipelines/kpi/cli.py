"""The `kpi` command line. Thin: parse, call one function of the package, print a JSON summary."""

from __future__ import annotations

import typer

from kpi.churn.cli import app as churn_app
from kpi.cli_support import json_command
from kpi.crypto.cli import app as crypto_app
from kpi.platform.cli import app as platform_app

app = typer.Typer(
    help="KPI Platform: crypto validate-before-load ETL and churn MLOps. "
    "Every command prints a JSON summary on its last stdout line and exits non-zero on failure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Warehouse schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(crypto_app, name="crypto")
app.add_typer(churn_app, name="churn")
app.add_typer(platform_app, name="platform")


@db_app.command("init")
@json_command
def db_init() -> dict:
    """Apply sql/init/*.sql (schemas raw, staging, prod, dqm and their tables) to KPI_DATABASE_URL."""
    from kpi.db import init_db

    return {"applied": init_db()}


@app.command("demo")
@json_command
def demo(
    days: int = typer.Option(10, help="Days of crypto transactions to simulate and load."),
    churn_users: int = typer.Option(5000, help="Users in the simulated churn sources."),
    skip_churn: bool = typer.Option(False, help="Run only the crypto part."),
) -> dict:
    """Run the embedded demo: crypto days through the DAG, then two churn training rounds and drift."""
    from kpi.demo import run_demo

    return run_demo(days=days, churn_users=churn_users, skip_churn=skip_churn)


if __name__ == "__main__":  # pragma: no cover
    app()
