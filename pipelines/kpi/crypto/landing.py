"""The landing prefix: files dropped under ``<KPI_STORAGE_URL>/landing/crypto/`` are ingested by the platform.

Layout (``file://`` or ``s3://`` alike)::

    landing/crypto/<name>.csv                        new files (the extract date: a YYYY-MM-DD in <name>)
    landing/crypto/processed/<UTC stamp>/<name>.csv  ingested, or skipped as content already ingested
    landing/crypto/rejected/<UTC stamp>/<name>.csv   set aside: cannot be ingested (not a CSV, bad header)
    landing/crypto/rejected/<UTC stamp>/<name>.csv.reason.txt   why

Only files directly under the prefix are new; names starting with ``.`` or ending in ``.tmp``/``.part``
are uploads in progress and wait. A repeat of content already ingested is skipped by its sha256, so
picking a file up twice (a crash between the ingest and the move) changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging

from kpi.settings import Settings, get_settings

log = logging.getLogger(__name__)
IN_PROGRESS_SUFFIXES = (".tmp", ".part")


class LandingError(RuntimeError):
    """Files were set aside: each one with its reason (the others were ingested)."""


def landing_url(settings: Settings | None = None) -> str:
    """``<KPI_STORAGE_URL>/landing/crypto`` (no trailing slash)."""
    from kpi.storage import join

    settings = settings or get_settings()
    return join(settings.resolved_storage_url, "landing", "crypto")


def _move(src: str, dst: str, settings: Settings) -> str:
    from kpi.storage import filesystem

    fs, src_path = filesystem(src, settings)
    _, dst_path = filesystem(dst, settings)
    fs.makedirs(dst_path.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(src_path, dst_path)
    return dst


def ingest_landing(settings: Settings | None = None, now: dt.datetime | None = None) -> dict:
    """Ingest every new file under the landing prefix, then move it to ``processed/`` or ``rejected/``.

    A file that cannot be ingested (:class:`~kpi.crypto.ingest.IngestError`: not a CSV text file, a header
    without the six columns or with one twice) is moved to ``rejected/`` with a ``.reason.txt`` beside it;
    the other files still load. Errors of the warehouse or of the storage itself are raised (retryable).

    Returns:
        ``{landing_url, ingested: [ingest summaries], skipped: [{file, duplicate_of, moved_to}],
        set_aside: [{file, reason, moved_to}], rows}``.
    """
    from kpi.crypto.ingest import IngestError, ingest_file
    from kpi.storage import join, list_files, write_text

    settings = settings or get_settings()
    base = landing_url(settings)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")  # no YYYY-MM-DD: names keep their date
    ingested, skipped, set_aside = [], [], []
    for url in list_files(base, settings):
        name = url.rsplit("/", 1)[1]
        if name.startswith(".") or name.endswith(IN_PROGRESS_SUFFIXES):
            continue
        archived = join(base, "processed", stamp, name)
        try:
            result = ingest_file(url, settings=settings, archived_url=archived)
        except IngestError as exc:
            rejected = join(base, "rejected", stamp, name)
            _move(url, rejected, settings)
            write_text(rejected + ".reason.txt", f"{exc}\n", settings)
            log.error("landing: set %s aside: %s", url, exc)
            set_aside.append({"file": url, "reason": str(exc), "moved_to": rejected})
            continue
        try:
            _move(url, archived, settings)
        except FileNotFoundError:  # another landing ingest took it meanwhile (and the sha256 kept one copy)
            archived = None
        if result["batch_id"] is None:
            skipped.append({"file": url, "duplicate_of": result["duplicate_of"], "moved_to": archived})
        else:
            ingested.append({**result, "moved_to": archived})
    return {"landing_url": base + "/", "ingested": ingested, "skipped": skipped, "set_aside": set_aside,
            "rows": sum(r["rows"] for r in ingested)}


def raise_for_set_aside(summary: dict) -> None:
    """Raise :class:`LandingError` naming every file :func:`ingest_landing` set aside, with its reason."""
    if summary.get("set_aside"):
        lines = [f"{f['file']} -> {f['moved_to']}: {f['reason']}" for f in summary["set_aside"]]
        raise LandingError(f"{len(lines)} landing file(s) set aside (the others were ingested): " + "; ".join(lines))
