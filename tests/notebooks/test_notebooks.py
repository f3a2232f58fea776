"""Both notebooks executed headless (nbclient) against small real stores, so they cannot rot.

Crypto: three simulated daily extracts go through the real ingest and validate-before-load run into a
database of their own. Churn: the session's champion (Spark-trained, promoted, with a drift report).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
CRYPTO_NB = NOTEBOOKS / "01-crypto-data-quality.ipynb"
CHURN_NB = NOTEBOOKS / "02-churn-model.ipynb"


def execute(path: Path, env: dict[str, str], cwd: Path) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh kernel whose environment is ``env``; fail on the first error."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel process inherits this environment
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(data.get("text/plain", ""))
    return "\n".join(parts)


def images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def base_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPI_") and k != "MLFLOW_TRACKING_URI"}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend puts figures into the outputs
    env.update(KPI_ENV="test", **values)
    return env


@pytest.mark.parametrize("path", [CRYPTO_NB, CHURN_NB], ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs_and_imports_kpi(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs before committing"
    assert any("from kpi" in c.source for c in code)
    # exploration only: functions and classes belong in kpi, not in the notebook
    assert not any(line.lstrip().startswith(("def ", "class ")) for c in code for line in c.source.splitlines())


@pytest.fixture()
def crypto_db(dash_db, tmp_path):
    """Three days of simulated extracts through the real ingest + validate-before-load run."""
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window
    from kpi.crypto.simulate import simulate_extracts
    from kpi.db import connect
    from kpi.settings import Settings

    settings = Settings(env="test", database_url=dash_db, home=tmp_path / "home",
                        storage_url=(tmp_path / "storage").as_uri())
    start = dt.date(2026, 1, 1)
    simulated = simulate_extracts(start, start + dt.timedelta(days=2), str(tmp_path / "extracts"),
                                  rows_per_day=150, anomaly_rate=0.05, seed=3, settings=settings)
    runs = []
    for day, url in zip(simulated["days"], simulated["files"], strict=True):
        ingest_file(url, settings=settings)
        runs.append(run_window(dt.date.fromisoformat(day["extract_date"]), settings=settings))
    yield settings, runs
    with connect(dash_db) as conn:
        conn.execute("TRUNCATE dqm.dq_runs, dqm.bt_crypto_events_rejects, prod.bt_crypto_events, "
                     "staging.bt_crypto_events_candidate, raw.bt_crypto_transaction_history, "
                     "raw.crypto_ingest_batches")
        conn.commit()


@pytest.mark.slow
def test_crypto_quality_notebook_runs_on_pipeline_output(crypto_db, tmp_path):
    from kpi.db import database_url

    settings, runs = crypto_db
    nb = execute(CRYPTO_NB, base_env(KPI_DATABASE_URL=database_url(settings), KPI_HOME=str(tmp_path / "home")),
                 tmp_path)
    text = outputs_text(nb)
    for run in runs:
        assert str(run["logical_date"]) in text
    assert images(nb) >= 1  # the gate chart at least
    rejected = sum(int(r["quarantined"] or 0) for r in runs)
    if rejected:
        assert "reason" in text


@pytest.mark.slow
def test_churn_model_notebook_runs_on_the_champion(churn_store, tmp_path):
    nb = execute(CHURN_NB, base_env(**churn_store["env"]), tmp_path)
    text = outputs_text(nb)
    first = churn_store["rounds"][0]
    assert f"champion: version {first['training']['model_version']}" in text
    assert images(nb) >= 2  # AUC over versions + SHAP summary (+ drift)
    assert "p_active_60d" in text and "base value (log-odds)" in text
    assert "drift_share" in text  # the drift history table
