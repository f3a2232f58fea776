"""Ingest: stream a crypto CSV from a path or URL into ``raw.bt_crypto_transaction_history`` with COPY.

Every row is kept exactly as received, as text: rows with the expected six columns land in the six
text columns (mapped by header name, case-insensitive, any order); rows with another column count
keep their whole line in ``raw_line``. The bytes are hashed while they stream; a file whose content
was already ingested is detected and, unless ``force``, rolled back (it would only add superseded
duplicates) and reported as ``duplicate_of``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
from collections.abc import Iterator

from kpi.settings import Settings, get_settings

SOURCE_COLUMNS = ("site_id", "user_id", "purchase_date", "crypto_type", "purchase_price", "purchase_units")
_DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")


class IngestError(ValueError):
    """The file cannot be ingested (missing columns, no extract date); nothing was written."""


class _HashingReader(io.RawIOBase):
    """A binary stream that feeds a sha256 with every byte read through it."""

    def __init__(self, inner, digest) -> None:
        super().__init__()
        self.inner = inner
        self.digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.inner.read(len(buffer))
        if not chunk:
            return 0
        self.digest.update(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


class _LineTracker:
    """Iterates text lines for csv.reader and remembers the physical lines of the last record."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.line_no = 0
        self.pending: list[str] = []

    def __iter__(self) -> "_LineTracker":
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.line_no += 1
        self.pending.append(line)
        return line

    def take(self) -> tuple[int, str]:
        """(first physical line number, raw text without the line break) of the record just read."""
        text = "".join(self.pending).rstrip("\r\n")
        first = self.line_no - len(self.pending) + 1
        self.pending = []
        return first, text


def map_header(header: list[str]) -> list[int]:
    """Positions of the six source columns in ``header`` (names case-insensitive, trimmed, any order).

    Raises:
        IngestError: naming the columns that are missing.
    """
    names = [h.strip().lower().lstrip("\ufeff") for h in header]
    missing = [c.upper() for c in SOURCE_COLUMNS if c not in names]
    if missing:
        raise IngestError(f"header {header!r} lacks column(s) {', '.join(missing)}; expected "
                          f"{', '.join(c.upper() for c in SOURCE_COLUMNS)} (any order, any case)")
    return [names.index(c) for c in SOURCE_COLUMNS]


def extract_date_from_name(source: str) -> dt.date | None:
    """The last YYYY-MM-DD in a file name or URL, if any (the simulator names its extracts so)."""
    found = _DATE_IN_NAME.findall(source)
    for candidate in reversed(found):
        try:
            return dt.date.fromisoformat(candidate)
        except ValueError:
            continue
    return None


def ingest_file(source: str, *, extract_date: dt.date | None = None, force: bool = False,
                settings: Settings | None = None, database_url: str | None = None) -> dict:
    """Load one CSV into raw with COPY, in one transaction.

    Args:
        source: local path, ``file://`` or ``s3://`` URL.
        extract_date: the day the upstream system produced the file. Default: a YYYY-MM-DD in the
            name, else the latest valid purchase date in the file.
        force: ingest even when identical content was ingested before.
        settings: settings (storage options for s3).
        database_url: warehouse URL (default: settings).

    Returns:
        ``{batch_id, source, rows, malformed_rows, extract_date, content_sha256, duplicate_of}``.
    """
    from kpi.db import connect
    from kpi.storage import filesystem

    settings = settings or get_settings()
    fs, path = filesystem(source, settings)
    if not fs.exists(path):
        raise IngestError(f"{source} does not exist")
    digest = hashlib.sha256()
    ingested_at = dt.datetime.now(dt.timezone.utc)
    with connect(database_url or settings.database_url) as conn, fs.open(path, "rb") as raw_stream:
        text = io.TextIOWrapper(io.BufferedReader(_HashingReader(raw_stream, digest), 1 << 20),
                                encoding="utf-8-sig", errors="backslashreplace", newline="")
        tracker = _LineTracker(iter(text))
        reader = csv.reader(tracker)
        try:
            header = next(reader)
        except StopIteration:
            raise IngestError(f"{source} is empty: expected a header line") from None
        header_text = tracker.take()[1]
        positions = map_header(header)
        width = len(header)
        batch_id = conn.execute(
            "INSERT INTO raw.crypto_ingest_batches (source, content_sha256, extract_date, header, row_count,"
            " malformed_rows, ingested_at) VALUES (%s, '', '1970-01-01', %s, 0, 0, %s) RETURNING batch_id",
            (source, header_text, ingested_at)).fetchone()[0]
        rows = malformed = 0
        copy_sql = ("COPY raw.bt_crypto_transaction_history (batch_id, source, line_no, ingested_at, site_id,"
                    " user_id, purchase_date, crypto_type, purchase_price, purchase_units, raw_line) FROM STDIN")
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for record in reader:
                line_no, line = tracker.take()
                if not record and not line.strip():
                    continue  # blank line: nothing was sent
                rows += 1
                if len(record) == width:
                    values = [record[i].replace("\x00", "\\x00") for i in positions]
                    copy.write_row((batch_id, source, line_no, ingested_at, *values, None))
                else:
                    malformed += 1
                    copy.write_row((batch_id, source, line_no, ingested_at, None, None, None, None, None, None,
                                    line.replace("\x00", "\\x00")))
        sha = digest.hexdigest()
        previous = conn.execute(
            "SELECT batch_id FROM raw.crypto_ingest_batches WHERE content_sha256 = %s AND batch_id <> %s"
            " ORDER BY batch_id LIMIT 1", (sha, batch_id)).fetchone()
        if previous and not force:
            conn.rollback()
            return {"batch_id": None, "source": source, "rows": 0, "malformed_rows": 0,
                    "content_sha256": sha, "duplicate_of": previous[0],
                    "note": "identical content was ingested before; nothing added (use --force to add it again)"}
        if extract_date is None:
            extract_date = extract_date_from_name(source)
        if extract_date is None:
            extract_date = conn.execute(
                "SELECT max(purchase_date_parsed) FROM raw.bt_crypto_transaction_history WHERE batch_id = %s",
                (batch_id,)).fetchone()[0]
        if extract_date is None:
            conn.rollback()
            raise IngestError(f"cannot tell the extract date of {source}: no YYYY-MM-DD in its name and no valid"
                              " purchase date in it; pass --extract-date")
        conn.execute(
            "UPDATE raw.crypto_ingest_batches SET content_sha256 = %s, extract_date = %s, row_count = %s,"
            " malformed_rows = %s WHERE batch_id = %s", (sha, extract_date, rows, malformed, batch_id))
        conn.commit()
    return {"batch_id": batch_id, "source": source, "rows": rows, "malformed_rows": malformed,
            "extract_date": extract_date, "content_sha256": sha, "duplicate_of": previous[0] if previous else None}


def ingest_many(sources: list[str], **kwargs) -> list[dict]:
    """Ingest several files in order (each its own transaction)."""
    return [ingest_file(s, **kwargs) for s in sources]
