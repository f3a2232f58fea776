"""The skeleton: settings, the real embedded Postgres, `kpi db init`, the CLI's JSON contract."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from kpi.settings import Settings


def test_settings_parse_lists_and_refuse_placeholder_secrets_in_prod(monkeypatch):
    monkeypatch.setenv("KPI_CRYPTO_ALLOWED_SITES", "ARGENTINA, BRASIL")
    assert Settings().crypto_allowed_sites == ["ARGENTINA", "BRASIL"]
    with pytest.raises(ValueError, match="placeholder"):
        Settings(env="prod", database_url="postgresql://x@h/db", aws_secret_access_key="minioadmin")
    with pytest.raises(ValueError, match="KPI_DATABASE_URL is required"):
        Settings(env="prod")


def test_db_init_is_idempotent_and_creates_the_schemas(pg_url):
    from kpi.db import init_db

    init_db(pg_url)
    init_db(pg_url)
    with psycopg.connect(pg_url) as conn:
        schemas = {r[0] for r in conn.execute("SELECT schema_name FROM information_schema.schemata")}
    assert {"raw", "staging", "prod", "dqm"} <= schemas


def _kpi(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kpi.cli", *args], capture_output=True, text=True, env=env)


def test_cli_db_init_prints_json_summary(pg_url, monkeypatch):
    import os

    res = _kpi("db", "init", env={**os.environ, "KPI_DATABASE_URL": pg_url})
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and "000_schemas.sql" in summary["applied"]


def test_cli_fails_with_a_clear_message_without_database(monkeypatch):
    import os

    env = {k: v for k, v in os.environ.items() if k != "KPI_DATABASE_URL"}
    res = _kpi("db", "init", env=env)
    assert res.returncode == 1
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and "KPI_DATABASE_URL" in summary["error"]
