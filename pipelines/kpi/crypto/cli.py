"""`kpi crypto ...` commands (thin wiring; heavy imports happen inside each command)."""

from __future__ import annotations

import typer

from kpi.cli_support import json_command, parse_date

app = typer.Typer(help="The crypto workflow.", no_args_is_help=True)


@app.command("simulate")
@json_command
def simulate(
    start: str = typer.Option(..., help="First extract day, YYYY-MM-DD."),
    end: str = typer.Option(..., help="Last extract day, YYYY-MM-DD."),
    out: str = typer.Option(..., help="Folder path or URL (file://, s3://) for one CSV per day."),
    rows_per_day: int = typer.Option(1000, help="New transactions per day."),
    anomaly_rate: float = typer.Option(0.02, help="Share of transactions carrying an anomaly."),
    update_rate: float = typer.Option(0.02, help="Share of transactions updated within the window."),
    delete_rate: float = typer.Option(0.01, help="Share of transactions deleted within the window."),
    seed: int = typer.Option(7, help="Random seed: the same seed writes the same bytes."),
) -> dict:
    """Play the upstream system: daily extracts with later updates, deletions and anomalies."""
    from kpi.crypto.simulate import simulate_extracts
    from kpi.settings import get_settings

    settings = get_settings()
    return simulate_extracts(parse_date(start, "--start"), parse_date(end, "--end"), out, rows_per_day,
                             anomaly_rate, seed, update_rate, delete_rate, settings.crypto_window_days, settings)


@app.command("ingest")
@json_command
def ingest(
    path_or_url: str = typer.Argument(..., help="A CSV file, or a folder of CSVs (path, file:// or s3://)."),
    extract_date: str | None = typer.Option(
        None, help="Day the file was extracted (default: YYYY-MM-DD in its name, else today, UTC)."),
    force: bool = typer.Option(False, help="Ingest even if identical content was ingested before."),
) -> dict:
    """Load CSV rows into raw.bt_crypto_transaction_history exactly as received (COPY); a folder loads every
    good file and names each bad one (exit 1)."""
    from kpi.crypto.ingest import ingest_many
    from kpi.db import database_url, ensure_schema
    from kpi.settings import get_settings
    from kpi.storage import filesystem, list_files

    day = parse_date(extract_date, "--extract-date") if extract_date else None  # bad input before any work
    settings = get_settings()
    schema_applied = ensure_schema(database_url(settings), settings)  # fails early when none is configured
    fs, path = filesystem(path_or_url, settings)
    sources = [f for f in list_files(path_or_url, settings) if f.lower().endswith(".csv")] \
        if fs.isdir(path) else [path_or_url]
    if not sources:
        raise FileNotFoundError(f"no .csv file in {path_or_url}")
    result = ingest_many(sources, extract_date=day, force=force, settings=settings)
    summary = {**result, "schema_applied": schema_applied}
    if result["failed"]:
        names = "; ".join(f"{f['source']}: {f['error']}" for f in result["failed"])
        return {"ok": False, "error": f"{len(result['failed'])} of {len(sources)} file(s) not ingested: {names}",
                **summary}
    return summary


@app.command("ingest-landing")
@json_command
def ingest_landing() -> dict:
    """Ingest every new file under <KPI_STORAGE_URL>/landing/crypto/ (what the DAG's first task does): moved to
    processed/ when ingested or already seen, to rejected/ with a reason when it cannot be ingested (exit 1)."""
    from kpi.crypto.landing import ingest_landing as ingest_new_files
    from kpi.db import database_url, ensure_schema
    from kpi.settings import get_settings

    settings = get_settings()
    schema_applied = ensure_schema(database_url(settings), settings)
    summary = {**ingest_new_files(settings), "schema_applied": schema_applied}
    if summary["set_aside"]:
        names = "; ".join(f"{f['file']}: {f['reason']}" for f in summary["set_aside"])
        return {"ok": False, "error": f"{len(summary['set_aside'])} file(s) set aside: {names}", **summary}
    return summary


@app.command("run")
@json_command
def run(
    date: str = typer.Option(..., "--date", help="The window's last day D: refreshes [D-(n-1), D] (default n = 5)."),
    run_id: str | None = typer.Option(None, help="Run id (default: manual__D__<random>)."),
) -> dict:
    """Stage, validate (GE in Postgres), quarantine, gate and publish the window; print the counts."""
    from kpi.crypto.pipeline import run_window
    from kpi.db import database_url, ensure_schema
    from kpi.settings import get_settings

    day = parse_date(date)
    settings = get_settings()
    schema_applied = ensure_schema(database_url(settings), settings)
    return {**run_window(day, run_id, settings), "schema_applied": schema_applied}
