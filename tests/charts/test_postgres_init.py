"""The postgres chart's first-start script, run for real: the rendered script against a real Postgres."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .platform import RELEASE


@pytest.fixture(scope="module")
def empty_postgres():
    """A fresh Postgres server (superuser `postgres`, its generated password), like the image's init server."""
    from kpi.db import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix="kpi-test-pginit-"))
    base.chmod(0o755)  # the server runs as `postgres`
    server = EmbeddedPostgres(base / "data", dbname="scratch")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _run_init(manifests, server, tmp_path) -> subprocess.CompletedProcess:
    docs = manifests["local"]
    init = next(o for o in docs if o["metadata"]["name"] == f"{RELEASE}-postgres-init")
    sql = next(o for o in docs if o["metadata"]["name"] == f"{RELEASE}-postgres-sql")
    sql_dir = tmp_path / "sql-init"
    sql_dir.mkdir(exist_ok=True)
    for name, text in sql["data"].items():
        (sql_dir / name).write_text(text)
    script = tmp_path / "10-databases.sh"
    # the ConfigMap mounts at /opt/kpi/sql-init in the pod; here it is a temporary folder
    script.write_text(init["data"]["10-databases.sh"].replace("/opt/kpi/sql-init", str(sql_dir)))
    env = {**os.environ, "POSTGRES_USER": "postgres", "PGHOST": "127.0.0.1", "PGPORT": str(server.port),
           "PGPASSWORD": server.password,
           "PATH": f"{server.bindir}{os.pathsep}{os.environ['PATH']}",
           "DB_PASSWORD_0": "kpi-pw", "DB_PASSWORD_1": "airflow-pw", "DB_PASSWORD_2": "mlflow-pw",
           "DB_READER_PASSWORD_0": "reader-pw"}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)


def test_init_script_creates_the_three_databases_and_the_warehouse_owned_by_kpi(manifests, empty_postgres, tmp_path):
    import psycopg

    result = _run_init(manifests, empty_postgres, tmp_path)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_postgres.url_for("postgres")) as conn:
        owners = dict(conn.execute(
            "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba"
            " WHERE d.datname IN ('kpi', 'airflow', 'mlflow')").fetchall())
        secrets = dict(conn.execute(
            "SELECT rolname, rolpassword IS NOT NULL FROM pg_authid WHERE rolname IN ('kpi', 'airflow', 'mlflow')"
        ).fetchall())
    assert owners == {"kpi": "kpi", "airflow": "airflow", "mlflow": "mlflow"}
    assert secrets == {"kpi": True, "airflow": True, "mlflow": True}
    with psycopg.connect(empty_postgres.url_for("kpi")) as conn:
        schemas = dict(conn.execute(
            "SELECT n.nspname, r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner"
            " WHERE n.nspname IN ('raw', 'staging', 'prod', 'dqm')").fetchall())
        tables = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE tableowner = 'kpi') FROM pg_tables"
            " WHERE schemaname IN ('raw', 'staging', 'prod', 'dqm')").fetchone()
    assert schemas == {"raw": "kpi", "staging": "kpi", "prod": "kpi", "dqm": "kpi"}
    assert tables[0] > 0 and tables[0] == tables[1]  # every warehouse table belongs to the pipelines' role


def test_init_script_can_run_again_without_harm(manifests, empty_postgres, tmp_path):
    first = _run_init(manifests, empty_postgres, tmp_path)
    second = _run_init(manifests, empty_postgres, tmp_path)
    assert first.returncode == 0 and second.returncode == 0, second.stderr


def test_the_bootstrap_job_can_reapply_the_ddl_as_the_warehouse_role(manifests, empty_postgres, tmp_path):
    """After the first start, the db-bootstrap Job runs `kpi db init` as role kpi on every upgrade."""
    from kpi.db import init_db

    assert _run_init(manifests, empty_postgres, tmp_path).returncode == 0
    job = next(o for o in manifests["local"] if o["kind"] == "Job" and o["metadata"]["name"].startswith(f"{RELEASE}-db-bootstrap"))
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["kpi", "db", "init"]
    init_db(f"postgresql://kpi:kpi-pw@127.0.0.1:{empty_postgres.port}/kpi")  # DB_PASSWORD_0 of _run_init


def test_the_reader_role_can_read_the_warehouse_and_nothing_more(manifests, empty_postgres, tmp_path):
    """JupyterLab connects as kpi_reader: SELECT on every warehouse table, now and after later DDL."""
    import psycopg

    from kpi.db import init_db

    assert _run_init(manifests, empty_postgres, tmp_path).returncode == 0
    init_db(f"postgresql://kpi:kpi-pw@127.0.0.1:{empty_postgres.port}/kpi")  # the bootstrap Job, as the owner
    with psycopg.connect(empty_postgres.url_for("kpi"), autocommit=True) as conn:
        conn.execute("SET ROLE kpi")
        conn.execute("CREATE TABLE IF NOT EXISTS prod.later_table (x int)")  # DDL of a later version
        conn.execute("SET ROLE kpi_reader")
        assert conn.execute("SELECT count(*) FROM prod.bt_crypto_events").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM prod.later_table").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM prod.bt_crypto_events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE prod.by_reader (x int)")
        conn.execute("RESET ROLE")
        conn.execute("DROP TABLE prod.later_table")
