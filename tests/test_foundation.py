"""The skeleton: settings, the real embedded Postgres, `kpi db init`, the CLI's JSON contract."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import psycopg
import pytest
from kpi.settings import Settings

from tests.conftest import reference_file


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
    return subprocess.run([sys.executable, "-m", "kpi.cli", *args], capture_output=True, text=True, env=env, check=False)


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


@pytest.fixture()
def empty_database(pg_url):
    """A database of the session server with nothing in it (dropped afterwards)."""
    name = "kpi_empty_" + str(abs(hash(pg_url)) % 10**6)
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_ensure_schema_applies_the_ddl_once_per_version(empty_database, tmp_path):
    import shutil

    from kpi.db import ensure_schema, init_sql_files

    assert ensure_schema(empty_database) is True  # a fresh database gets every table
    assert ensure_schema(empty_database) is False  # nothing changed: one query, no DDL
    # a new version of the files (an upgraded checkout) is applied on the next command
    sql = tmp_path / "sql"
    shutil.copytree(init_sql_files()[0].parents[1], sql)
    (sql / "init" / "999_extra.sql").write_text("CREATE TABLE IF NOT EXISTS dqm.extra_for_test (x int);\n")
    upgraded = Settings(sql_dir=sql)
    assert ensure_schema(empty_database, upgraded) is True
    assert ensure_schema(empty_database, upgraded) is False
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT count(*) FROM dqm.schema_versions").fetchone()[0] == 2
        assert conn.execute("SELECT to_regclass('dqm.extra_for_test')").fetchone()[0] is not None


def test_crypto_commands_work_on_a_database_nobody_prepared(empty_database, tmp_path):
    import os

    env = {**os.environ, "KPI_DATABASE_URL": empty_database, "KPI_HOME": str(tmp_path / "home"),
           "KPI_STORAGE_URL": (tmp_path / "storage").as_uri()}
    seed = reference_file("seed-data", "BT_CRYPTO_TRANSACTION_HISTORY.csv")
    # the seed file's name carries no date: say which day it was extracted (else it would be today)
    ingest = _kpi("crypto", "ingest", str(seed), "--extract-date", "2023-02-01", env=env)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    summary = json.loads(ingest.stdout.strip().splitlines()[-1])
    assert summary["schema_applied"] is True and summary["rows"] > 0
    run = _kpi("crypto", "run", "--date", summary["files"][0]["extract_date"], env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # the window [D-4, D] of the extract's day holds some of its rows; every one is accounted for
    assert result["schema_applied"] is False and 0 < result["raw_rows"] <= summary["rows"]
    assert result["raw_rows"] == result["published"] + result["quarantined"] + result["superseded"]


def test_a_failing_run_reports_its_own_error_not_a_follow_up_one(empty_database, monkeypatch):
    from kpi.crypto.pipeline import run_window

    # no tables at all (the library call does not apply the DDL): the first statement fails
    with pytest.raises(psycopg.errors.UndefinedTable):
        run_window(dt.date(2026, 1, 5), "no-tables", Settings(database_url=empty_database))
