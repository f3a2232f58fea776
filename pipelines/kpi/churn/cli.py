"""`kpi churn ...` commands (thin wiring; heavy imports happen inside each command)."""

from __future__ import annotations

import typer

from kpi.cli_support import json_command, parse_date

app = typer.Typer(help="The churn workflow.", no_args_is_help=True)


@app.command("drift")
@json_command
def drift(
    data: str = typer.Option(..., "--data", help="Folder or URL (file://, s3://) with the five source CSVs."),
    as_of: str = typer.Option(..., "--as-of", help="Monitoring date YYYY-MM-DD (features use data before it)."),
    engine: str = typer.Option("auto", help="Current features with auto (pandas for small data), pandas, spark."),
) -> dict:
    """Evidently drift of the features at --as-of against the champion's training features."""
    from kpi.churn.drift import run_drift
    from kpi.settings import get_settings

    return run_drift(get_settings(), data, parse_date(as_of, "--as-of"), engine=engine)


@app.command("simulate")
def simulate(
    out: str = typer.Option(..., "--out", help="Folder or URL (file://, s3://) to write the CSVs into."),
    users: int = typer.Option(10_000, "--users", help="Users in the user base (DEMOGRAFICOS.csv)."),
    as_of: str = typer.Option(..., "--as-of", help="As-of date YYYY-MM-DD: payments cover the 180 days before it."),
    seed: int = typer.Option(42, "--seed", help="Random seed; the output is a function of all the options."),
    scenario: str = typer.Option(
        "baseline", "--scenario", help="baseline, or shifted: less engagement, inflation, more promotions."
    ),
    dated_snapshots: bool = typer.Option(
        True,
        "--dated-snapshots/--undated-snapshots",
        help="Monthly snapshot history with SNAPSHOT_DATE, or only the snapshot at --as-of in the original shape.",
    ),
) -> None:
    """Write simulated churn sources (five CSVs) and OUTCOMES.csv; print the oracle AUC."""
    from kpi.cli_support import json_command, parse_date

    @json_command
    def body() -> dict:
        from kpi.churn.simulate import simulate_sources

        return simulate_sources(
            out, users, parse_date(as_of, "--as-of"), seed=seed, scenario=scenario, dated_snapshots=dated_snapshots
        )

    body()
