"""Warehouse access: connections, bootstrap DDL, and a real throwaway Postgres for one machine."""

from __future__ import annotations

import contextlib
import getpass
import glob
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql as pgsql
from pydantic import SecretStr

from kpi.redaction import reveal
from kpi.settings import Settings, get_settings

log = logging.getLogger(__name__)


class DatabaseNotConfigured(RuntimeError):
    """Raised when a command needs the warehouse and ``KPI_DATABASE_URL`` is unset."""


def database_url(settings: Settings | None = None) -> str:
    """The warehouse URL to connect with, password included (never print it: see ``redact_url``).

    Raises:
        DatabaseNotConfigured: ``KPI_DATABASE_URL`` is unset.
    """
    settings = settings or get_settings()
    if not settings.database_url:
        raise DatabaseNotConfigured(
            "KPI_DATABASE_URL is not set: point it at a Postgres (postgresql://user:pass@host:port/db), "
            "or use `kpi demo` / `task demo`, which start an embedded Postgres"
        )
    return reveal(settings.database_url)


def connect(url: str | SecretStr | None = None, **kwargs) -> psycopg.Connection:
    """Open a psycopg connection to the warehouse (``url``, plain or a secret setting, or the settings)."""
    url = reveal(url) or database_url()
    return psycopg.connect(_libpq(url), **kwargs)


def _libpq(url: str | SecretStr) -> str:
    url = reveal(url)
    # SQLAlchemy-style driver suffixes are not libpq URLs
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def sqlalchemy_url(url: str | SecretStr | None = None) -> str:
    """The same database as a SQLAlchemy URL with the psycopg 3 driver."""
    return "postgresql+psycopg://" + _libpq(reveal(url) or database_url()).split("://", 1)[1]


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


def init_db(url: str | SecretStr | None = None, settings: Settings | None = None) -> list[str]:
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


def ensure_schema(url: str | SecretStr | None = None, settings: Settings | None = None) -> bool:
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
# Embedded Postgres: Debian's binaries, run as the `postgres` user when we are root. No connection without
# the generated password (scram-sha-256), on TCP and on the socket alike.
# --------------------------------------------------------------------------------------------------------

# The whole pg_hba.conf of an embedded server: every connection proves the password.
MANAGED_HBA = """# Written by kpi.db.EmbeddedPostgres: every connection needs the generated password.
# TYPE  DATABASE  USER  ADDRESS         METHOD
local   all       all                   scram-sha-256
host    all       all   127.0.0.1/32    scram-sha-256
host    all       all   ::1/128         scram-sha-256
"""
# Used only while the server listens on no TCP address (socket in the 0700 data dir): to set the password.
MAINTENANCE_HBA = "local all all trust\n"


class EmbeddedPostgresError(RuntimeError):
    """The embedded Postgres cannot be started as asked; the message says what to do."""


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


def _write_private(path: Path, text: str, for_pg: bool = False) -> None:
    """Write ``text`` to ``path`` readable by its owner only (the server's user when ``for_pg``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    if for_pg:
        _chown_for_pg(tmp)
    os.replace(tmp, path)


def load_or_create_password(path: Path) -> tuple[str, bool]:
    """The password stored in ``path`` (mode 0600), created at random when absent; ``(password, created)``.

    Raises:
        EmbeddedPostgresError: the file belongs to another user or is empty.
    """
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        info = path.stat()
        if info.st_uid != os.geteuid():
            raise EmbeddedPostgresError(
                f"password file {path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()});"
                " it must be private to whoever starts the embedded Postgres") from None
        if info.st_mode & 0o077:
            path.chmod(0o600)  # tighten a copy made with a permissive umask
        password = path.read_text().strip()
        if not password:
            raise EmbeddedPostgresError(f"password file {path} is empty; delete it to generate a new password")
        return password, False
    password = secrets.token_urlsafe(24)  # URL-safe: goes into the URL unquoted
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password, True


class EmbeddedPostgres:
    """A real Postgres server in ``data_dir`` on 127.0.0.1:``port``; initialised on first start.

    Every connection needs a generated password (scram-sha-256 on TCP and on the Unix socket), stored in
    ``password_file`` with mode 0600: by default ``<data_dir>.password`` beside the data dir, i.e.
    ``<KPI_HOME>/postgres.password`` for the demo and the dashboard. :meth:`start` returns a URL that
    carries it. A data dir initialised without a password (``trust``, by older checkouts) is upgraded on
    start: the password is set while the server listens on no TCP address, then its ``pg_hba.conf`` is
    replaced. Deleting the password file resets the password the same way on the next start.
    """

    def __init__(self, data_dir: Path, port: int | None = None, dbname: str = "kpi",
                 password_file: Path | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.dbname = dbname
        self.user = "postgres" if os.geteuid() == 0 else getpass.getuser()
        self.bindir = _pg_bindir()
        self.password_file = Path(password_file) if password_file else self.data_dir.with_name(
            self.data_dir.name + ".password")
        self.password: str | None = None

    @property
    def url(self) -> str:
        """URL of the server's database ``dbname``, password included (never print it)."""
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        """URL of another database of this server, password included."""
        if self.password is None:
            self.password = load_or_create_password(self.password_file)[0]
        return f"postgresql://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{dbname}"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "sock"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(_as_pg_user([str(self.bindir / args[0]), *args[1:]]), capture_output=True,
                             text=True)
        if check and res.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}"
                               " (as root, every parent folder of the data dir must be traversable by"
                               " the `postgres` user)")
        return res

    def start(self) -> str:
        """Initialise (first time) or upgrade the data dir, start the server, create ``dbname``; return its URL."""
        self.password, created = load_or_create_password(self.password_file)
        hba = self.data_dir / "pg_hba.conf"
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        elif created or not hba.exists() or hba.read_text() != MANAGED_HBA:
            self._set_password_offline(reason="its password file was just created" if created and
                                       hba.exists() and hba.read_text() == MANAGED_HBA else
                                       "it was initialised without a password (trust)")
        self.data_dir.chmod(0o700)
        self.socket_dir.mkdir(exist_ok=True)
        _chown_for_pg(self.socket_dir)
        server_log = self.data_dir / "server.log"
        opts = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                "-c unix_socket_permissions=0700 -c password_encryption=scram-sha-256 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                "-c shared_buffers=256MB -c work_mem=64MB -c maintenance_work_mem=256MB")
        res = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(server_log), "-o", opts, "-w", "-t", "60",
                        "start", check=False)
        if res.returncode != 0:
            tail = server_log.read_text()[-2000:] if server_log.exists() else ""
            raise RuntimeError(f"embedded Postgres failed to start: {res.stderr}\n{tail}")
        try:
            self._wait_ready()
            with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (self.dbname,)).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{self.dbname}"')
        except BaseException:
            self.stop()  # a server nobody can use is not left running
            raise
        return self.url

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _chown_for_pg(self.data_dir)
        # initdb runs as the server's user, which cannot read our 0600 file: a private copy for it
        pwfile = self.data_dir.with_name(f".{self.data_dir.name}.initdb-pw")
        _write_private(pwfile, self.password + "\n", for_pg=True)
        try:
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "--pwfile", str(pwfile),
                      "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        finally:
            pwfile.unlink(missing_ok=True)
        _write_private(self.data_dir / "pg_hba.conf", MANAGED_HBA, for_pg=True)

    def _set_password_offline(self, reason: str) -> None:
        """Set the password with the server listening on its private socket only, then require it everywhere."""
        if self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0:
            raise EmbeddedPostgresError(
                f"the Postgres in {self.data_dir} must get a password ({reason}) but it is running, probably"
                f" started by an older checkout; stop it first (as the `postgres` user: {self.bindir}/pg_ctl"
                f" -D {self.data_dir} stop) and start again")
        log.warning("embedded Postgres in %s: setting a password (%s); it is in %s", self.data_dir, reason,
                    self.password_file)
        self.data_dir.chmod(0o700)
        self.socket_dir.mkdir(exist_ok=True)
        _chown_for_pg(self.socket_dir)
        maintenance = self.data_dir / "kpi-maintenance-hba.conf"
        _write_private(maintenance, MAINTENANCE_HBA, for_pg=True)
        opts = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses='' -c unix_socket_permissions=0700"
                f" -c hba_file={maintenance}")
        server_log = self.data_dir / "server.log"
        res = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(server_log), "-o", opts, "-w", "-t", "60",
                        "start", check=False)
        try:
            if res.returncode != 0:
                tail = server_log.read_text()[-2000:] if server_log.exists() else ""
                raise RuntimeError(f"embedded Postgres failed to start for its password upgrade: {res.stderr}\n{tail}")
            with psycopg.connect(host=str(self.socket_dir), port=self.port, user=self.user, dbname="postgres",
                                 autocommit=True) as conn:
                conn.execute("SET password_encryption = 'scram-sha-256'")
                conn.execute(pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    pgsql.Identifier(self.user), pgsql.Literal(self.password)))
        finally:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)
            maintenance.unlink(missing_ok=True)
        _write_private(self.data_dir / "pg_hba.conf", MANAGED_HBA, for_pg=True)

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.url_for("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if "password authentication failed" in str(exc):
                    raise EmbeddedPostgresError(
                        f"the embedded Postgres in {self.data_dir} refuses the password in {self.password_file}:"
                        " restore the file that belongs to this data dir, or delete it to set a new password on"
                        " the next start") from None
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
