"""Warehouse access: connections, bootstrap DDL, and a real throwaway Postgres for one machine."""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from kpi.settings import Settings, get_settings


class DatabaseNotConfigured(RuntimeError):
    """Raised when a command needs the warehouse and ``KPI_DATABASE_URL`` is unset."""


def database_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if not settings.database_url:
        raise DatabaseNotConfigured(
            "KPI_DATABASE_URL is not set: point it at a Postgres (postgresql://user:pass@host:port/db), "
            "or use `kpi demo` / `task demo`, which start an embedded Postgres"
        )
    return settings.database_url


def connect(url: str | None = None, **kwargs) -> psycopg.Connection:
    """Open a psycopg connection to the warehouse (``url`` or the settings)."""
    url = url or database_url()
    return psycopg.connect(_libpq(url), **kwargs)


def _libpq(url: str) -> str:
    # SQLAlchemy-style driver suffixes are not libpq URLs
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def sqlalchemy_url(url: str | None = None) -> str:
    """The same database as a SQLAlchemy URL with the psycopg 3 driver."""
    return "postgresql+psycopg://" + _libpq(url or database_url()).split("://", 1)[1]


def init_sql_files(settings: Settings | None = None) -> list[Path]:
    settings = settings or get_settings()
    folder = settings.resolved_sql_dir / "init"
    files = sorted(folder.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no bootstrap DDL found in {folder} (set KPI_SQL_DIR)")
    return files


def schema_digest(settings: Settings | None = None) -> str:
    """sha256 over the names and contents of ``sql/init/*.sql``: which version of the DDL this is."""
    import hashlib

    digest = hashlib.sha256()
    for f in init_sql_files(settings):
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


def init_db(url: str | None = None, settings: Settings | None = None) -> list[str]:
    """Apply every ``sql/init/*.sql`` in order (idempotent); return the file names applied.

    Records the files' digest in ``dqm.schema_versions`` (see :func:`ensure_schema`).
    """
    files = init_sql_files(settings)
    digest = schema_digest(settings)
    with connect(url) as conn:
        # one advisory lock so two concurrent `kpi db init` don't race on CREATE IF NOT EXISTS
        conn.execute("SELECT pg_advisory_lock(hashtext('kpi-db-init'))")
        try:
            for f in files:
                conn.execute(f.read_text())
            conn.execute("INSERT INTO dqm.schema_versions (digest, files) VALUES (%s, %s)"
                         " ON CONFLICT (digest) DO NOTHING", (digest, [f.name for f in files]))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('kpi-db-init'))")
            conn.commit()
    return [f.name for f in files]


def ensure_schema(url: str | None = None, settings: Settings | None = None) -> bool:
    """Apply ``sql/init`` unless this database has already seen exactly these files; True when applied.

    A fresh database gets its tables, and an upgraded checkout its new columns, on the first command
    that needs them, instead of failing on a missing relation. One small query when nothing changed.
    """
    digest = schema_digest(settings)
    with connect(url) as conn:
        known = conn.execute("SELECT to_regclass('dqm.schema_versions') IS NOT NULL").fetchone()[0]
        if known and conn.execute("SELECT 1 FROM dqm.schema_versions WHERE digest = %s", (digest,)).fetchone():
            return False
    init_db(url, settings)
    return True


# --------------------------------------------------------------------------------------------------------
# Embedded Postgres: Debian's binaries, run as the `postgres` user when we are root.
# --------------------------------------------------------------------------------------------------------


def _pg_bindir() -> Path:
    env = os.environ.get("KPI_PG_BINDIR")
    candidates = [env] if env else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    for c in candidates:
        if c and (Path(c) / "initdb").exists():
            return Path(c)
    raise FileNotFoundError(
        "no Postgres server binaries found (initdb). Install them (`apt-get install postgresql`) "
        "or set KPI_DATABASE_URL to an existing database"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _chown_for_pg(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class EmbeddedPostgres:
    """A real Postgres server in ``data_dir`` on 127.0.0.1:``port``; initialised on first start."""

    def __init__(self, data_dir: Path, port: int | None = None, dbname: str = "kpi") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.dbname = dbname
        self.user = "postgres" if os.geteuid() == 0 else getpass.getuser()
        self.bindir = _pg_bindir()

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(_as_pg_user([str(self.bindir / args[0]), *args[1:]]), capture_output=True,
                             text=True)
        if check and res.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}"
                               " (as root, every parent folder of the data dir must be traversable by"
                               " the `postgres` user)")
        return res

    def start(self) -> str:
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            _chown_for_pg(self.data_dir)
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
                      "-E", "UTF8", "--locale=C.UTF-8")
        self.data_dir.chmod(0o700)
        sock = self.data_dir / "sock"
        sock.mkdir(exist_ok=True)
        _chown_for_pg(sock)
        log = self.data_dir / "server.log"
        opts = (f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                "-c shared_buffers=256MB -c work_mem=64MB -c maintenance_work_mem=256MB")
        res = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(log), "-o", opts, "-w", "-t", "60",
                        "start", check=False)
        if res.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"embedded Postgres failed to start: {res.stderr}\n{tail}")
        self._wait_ready()
        with psycopg.connect(f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres",
                             autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (self.dbname,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.dbname}"')
        return self.url

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres",
                                     connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise TimeoutError(f"embedded Postgres on port {self.port} did not accept connections")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, port: int | None = None) -> Iterator[str]:
    """Start a real Postgres in ``data_dir`` for the duration of the block; yield its URL."""
    pg = EmbeddedPostgres(data_dir, port)
    try:
        yield pg.start()
    finally:
        pg.stop()
