"""One-machine services for the demo and the dashboard: an embedded Postgres under ``KPI_HOME``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from kpi.db import EmbeddedPostgres, ensure_schema
from kpi.settings import Settings, get_settings, reload_settings

DEMO_PG_PORT = 55432


@contextlib.contextmanager
def local_services(settings: Settings | None = None) -> Iterator[Settings]:
    """Make sure a warehouse is reachable: reuse ``KPI_DATABASE_URL`` or start the embedded one.

    The embedded server keeps its data in ``<home>/postgres`` so that a later ``task dashboard``
    sees what the demo wrote; it is stopped when the block ends.
    """
    settings = settings or get_settings()
    pg = None
    if not settings.database_url:
        port = int(os.environ.get("KPI_EMBEDDED_PG_PORT", DEMO_PG_PORT))
        pg = EmbeddedPostgres(settings.home_dir / "postgres", port=port)
        os.environ["KPI_DATABASE_URL"] = pg.start()
    try:
        settings = reload_settings()
        # a database that has seen this DDL is left alone, so a read-only role (JupyterLab's) can use it
        ensure_schema(settings.database_url, settings)
        yield settings
    finally:
        if pg is not None:
            pg.stop()
            os.environ.pop("KPI_DATABASE_URL", None)
            reload_settings()
