"""The embedded Postgres (demo, dashboard, tests) accepts no connection without its generated password."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from kpi.db import EmbeddedPostgres, EmbeddedPostgresError, _as_pg_user, _chown_for_pg


@pytest.fixture()
def pg_base():
    """A folder the `postgres` user can traverse (pytest's own temp folders are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="kpi-test-pgauth-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_ambient_password(monkeypatch, tmp_path):
    """libpq must not find a password anywhere else (PGPASSWORD, ~/.pgpass) when a test connects without one."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


def _refused(conninfo: str) -> str:
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(conninfo, connect_timeout=5).close()
    return str(err.value)


def _passwordless(pg: EmbeddedPostgres) -> tuple[str, str]:
    return (f"postgresql://postgres@127.0.0.1:{pg.port}/postgres",
            f"host={pg.socket_dir} port={pg.port} user=postgres dbname=postgres")


def _trust_initdb(pg: EmbeddedPostgres) -> None:
    """A data dir as older checkouts made it: initdb --auth=trust."""
    pg.data_dir.mkdir(parents=True)
    _chown_for_pg(pg.data_dir)
    subprocess.run(_as_pg_user([str(pg.bindir / "initdb"), "-D", str(pg.data_dir), "-U", pg.user, "--auth=trust",
                                "-E", "UTF8", "--locale=C.UTF-8"]), check=True, capture_output=True)


def _pg_ctl(pg: EmbeddedPostgres, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_as_pg_user([str(pg.bindir / "pg_ctl"), "-D", str(pg.data_dir), *args]),
                          capture_output=True, text=True, check=False, timeout=120)


def _start_as_before(pg: EmbeddedPostgres) -> subprocess.CompletedProcess:
    """Start the server the way older checkouts did: trust, TCP on 127.0.0.1 (log to a file, not our pipe)."""
    return _pg_ctl(pg, "-l", str(pg.data_dir / "old.log"), "-o",
                   f"-p {pg.port} -k {pg.data_dir} -c listen_addresses=127.0.0.1", "-w", "start")


def test_no_connection_without_the_password_on_tcp_or_the_socket(pg_base):
    pg = EmbeddedPostgres(pg_base / "data")
    url = pg.start()
    try:
        tcp, sock = _passwordless(pg)
        assert "password" in _refused(tcp)
        assert "password" in _refused(sock)
        assert "password" in _refused(tcp.replace("postgres@", "postgres:guess@"))
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (pg.user,)
            hba = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
        assert hba == [("scram-sha-256",)]
        assert urlsplit(url).password == pg.password
    finally:
        pg.stop()
    info = pg.password_file.stat()
    assert pg.password_file == pg_base / "data.password"
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert pg.password_file.read_text().strip() == pg.password and len(pg.password) >= 24


def test_the_same_password_serves_a_restart(pg_base):
    first = EmbeddedPostgres(pg_base / "data")
    first.start()
    first.stop()
    again = EmbeddedPostgres(pg_base / "data")
    try:
        with psycopg.connect(again.start()):
            pass
    finally:
        again.stop()
    assert again.password == first.password


def test_a_data_dir_made_with_trust_is_upgraded_and_keeps_its_data(pg_base):
    pg = EmbeddedPostgres(pg_base / "data")
    _trust_initdb(pg)
    assert _start_as_before(pg).returncode == 0
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")  # the old server was open to anyone: that is the bug
    finally:
        _pg_ctl(pg, "-m", "fast", "-w", "stop")
    url = pg.start()
    try:
        for conninfo in _passwordless(pg):
            assert "password" in _refused(conninfo)
        with psycopg.connect(pg.url_for("postgres")) as conn:
            assert conn.execute("SELECT to_regclass('public.kept') IS NOT NULL").fetchone() == (True,)
        psycopg.connect(url).close()
    finally:
        pg.stop()


def test_a_running_trust_server_is_refused_with_the_way_out(pg_base):
    pg = EmbeddedPostgres(pg_base / "data")
    _trust_initdb(pg)
    assert _start_as_before(pg).returncode == 0
    try:
        with pytest.raises(EmbeddedPostgresError, match=r"it is running.*stop it first.*pg_ctl -D .*data stop"):
            pg.start()
    finally:
        _pg_ctl(pg, "-m", "fast", "-w", "stop")


def test_a_password_file_that_does_not_match_is_named_and_the_server_not_left_running(pg_base):
    pg = EmbeddedPostgres(pg_base / "data")
    pg.start()
    pg.stop()
    pg.password_file.write_text("not-the-password\n")
    with pytest.raises(EmbeddedPostgresError, match=r"refuses the password in .*data\.password.*delete it"):
        EmbeddedPostgres(pg_base / "data").start()
    assert not (pg.data_dir / "postmaster.pid").exists()
    pg.password_file.unlink()  # the way out the message gives: a new password is set on the next start
    fresh = EmbeddedPostgres(pg_base / "data")
    try:
        psycopg.connect(fresh.start()).close()
    finally:
        fresh.stop()
    assert fresh.password != "not-the-password"


def test_the_session_warehouse_of_the_tests_needs_its_password_too(pg_url):
    if os.environ.get("KPI_DATABASE_URL"):
        pytest.skip("an external KPI_DATABASE_URL: its authentication is not ours to check")
    parts = urlsplit(pg_url)
    assert parts.password
    assert "password" in _refused(pg_url.replace(f":{parts.password}@", "@"))
