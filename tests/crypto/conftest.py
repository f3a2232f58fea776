"""Fixtures of the crypto tests: a clean crypto warehouse on the session Postgres, CSV helpers, prod snapshots."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from kpi.db import connect

HEADER = "SITE_ID,USER_ID,PURCHASE_DATE,CRYPTO_TYPE,PURCHASE_PRICE,PURCHASE_UNITS"
CRYPTO_TABLES = ("raw.bt_crypto_transaction_history", "raw.crypto_ingest_batches",
                 "staging.bt_crypto_events_candidate", "prod.bt_crypto_events", "dqm.bt_crypto_events_rejects")


def dmy(day: dt.date) -> str:
    """A date as the source writes it (D/M/YYYY)."""
    return f"{day.day}/{day.month}/{day.year}"


def write_extract(folder: Path, extract_date: dt.date, lines: list[str], header: str = HEADER) -> Path:
    """Write one extract named like the simulator's (the extract date is read from the name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"BT_CRYPTO_TRANSACTION_HISTORY_{extract_date.isoformat()}.csv"
    path.write_text(header + "\n" + "\n".join(lines) + "\n")
    return path


def prod_snapshot(url) -> list[tuple]:
    """Every prod row with every column (timestamps included: an untouched row keeps them)."""
    with connect(url) as conn:
        return conn.execute("SELECT * FROM prod.bt_crypto_events ORDER BY 1, 2, 3, 4").fetchall()


def query(url, sql: str, params=None) -> list[tuple]:
    """Rows of ``sql`` on ``url`` (a plain URL or the settings' secret one)."""
    with connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def clean_crypto_tables(url) -> None:
    with connect(url) as conn:
        conn.execute(f"TRUNCATE {', '.join(CRYPTO_TABLES)} RESTART IDENTITY CASCADE")
        conn.execute("DELETE FROM dqm.dq_runs WHERE pipeline = 'crypto_events'")


@pytest.fixture()
def crypto_env(kpi_env):
    """Settings of :func:`kpi_env` on an emptied crypto warehouse (raw, staging, prod, rejects, runs)."""
    clean_crypto_tables(kpi_env.database_url)
    yield kpi_env
