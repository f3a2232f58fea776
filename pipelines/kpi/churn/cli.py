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


@app.command("train")
@json_command
def train(
    data: str = typer.Option(..., "--data", help="Folder or URL (file://, s3://) with the five source CSVs."),
    as_of: str = typer.Option(..., "--as-of", help="Training date YYYY-MM-DD (labels in [as_of-60d, as_of))."),
    trials: int | None = typer.Option(None, "--trials", help="Search trials (default KPI_CHURN_SEARCH_TRIALS)."),
    in_process: bool = typer.Option(
        False, "--in-process", help="Train in this process on a local SparkSession instead of spark-submit."
    ),
) -> dict:
    """Validate the sources (bad rows quarantined), train on Spark (KPI_SPARK_BACKEND), then promote or keep the champion."""
    from kpi.churn.registry import evaluate_and_promote
    from kpi.churn.validate import assert_valid_sources, quality_report
    from kpi.settings import get_settings

    settings = get_settings()
    day = parse_date(as_of, "--as-of")
    validation = assert_valid_sources(data, settings)  # the job reuses this validation (same data version)
    if in_process:
        from kpi.churn.train import train_model

        result = {**train_model(settings, data, day, trials=trials), "backend": "in-process"}
    else:
        from kpi.churn.spark_submit import submit_training

        result = submit_training(settings, data, day, trials=trials)
    promotion = evaluate_and_promote(settings, result["model_version"])
    return {
        "run_id": result["run_id"],
        "model_version": result["model_version"],
        "auc": result["auc"],
        "data_version": result["data_version"],
        "backend": result.get("backend"),
        "model_family": result.get("model_family"),
        "decision": promotion["decision"],
        "reason_code": promotion["reason_code"],
        "reason": promotion["reason"],
        "compared_with_version": promotion["compared_with_version"],
        "champion_auc": promotion["champion_auc"],
        "champion_version": promotion["champion_version"],
        "results_url": result.get("results_url"),
        "source_validation": quality_report(validation),
    }


@app.command("deliver")
@json_command
def deliver(
    data: str = typer.Option(..., "--data", help="Folder or URL (file://, s3://) with the five source CSVs."),
    as_of: str = typer.Option(..., "--as-of", help="Scoring date YYYY-MM-DD (features from data before it)."),
    engine: str | None = typer.Option(None, "--engine", help="auto, pandas or spark (default KPI_CHURN_SCORING_ENGINE)."),
) -> dict:
    """Score every user with the champion into prod.churn_scores for --as-of (what the churn_scoring DAG runs;
    a rerun changes nothing)."""
    from kpi.churn.delivery import deliver_scores
    from kpi.settings import get_settings

    return deliver_scores(get_settings(), data, parse_date(as_of, "--as-of"), engine=engine)


@app.command("serve")
@json_command
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 in a container)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="One log line per request."),
) -> dict:
    """Serve the champion over HTTP (POST /score, GET /model, GET /healthz); follows the alias without restart."""
    from kpi.churn.serve import serve as run
    from kpi.settings import get_settings

    return run(get_settings(), host, port, access_log=access_log)


@app.command("score")
@json_command
def score(
    data: str = typer.Option(..., "--data", help="Folder or URL (file://, s3://) with the five source CSVs."),
    as_of: str = typer.Option(..., "--as-of", help="Scoring date YYYY-MM-DD (features from data before it)."),
    output: str = typer.Option(..., "--output", help="CSV path or URL: CUS_CUST_ID_BUY, p_active_60d."),
) -> dict:
    """Score every user of the sources with the champion model."""
    from kpi.churn.score import score_users
    from kpi.settings import get_settings

    return score_users(get_settings(), data, parse_date(as_of, "--as-of"), output)
