"""Ingest: load a crypto CSV from a path or URL into ``raw.bt_crypto_transaction_history`` with COPY.

Every row is kept exactly as received, as text, one record per physical line: a line that is a record of
the header's columns lands in the six text columns (mapped by header name, case-insensitive, any order);
any other line (wrong column count, an unmatched quote) keeps its whole text in ``raw_line``, so a stray
quote costs one line, never the lines after it. No value can make the load fail: each row is typed here
(:func:`type_date`, :func:`type_number`, :func:`type_user_id`, string tests only, values cached per
distinct date), and a number too long for Postgres gets a stand-in that breaks the same rules.

The bytes are hashed in a first pass, so a file whose content was ingested before is reported as
``duplicate_of`` before anything is copied; a unique index on the hash settles two ingests of the same
bytes running at once (one wins, the other reports the duplicate). ``force`` adds a deliberate copy.
The extract date comes from the caller, else the file name, else the ingest date: never from the rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

from kpi.crypto.queries import sql
from kpi.settings import Settings, get_settings

SOURCE_COLUMNS = ("site_id", "user_id", "purchase_date", "crypto_type", "purchase_price", "purchase_units")
EARLIEST_PURCHASE_DATE = dt.date(2009, 1, 3)  # = rules.EARLIEST_PURCHASE_DATE and raw.crypto_window_day
NUMBER_DIGITS_KEPT = 20  # more significant integer digits or decimals than this: a stand-in (always rejected)
FIELD_LIMIT = (1 << 31) - 1  # Postgres keeps up to 1 GB in a text value; csv's default stops at 128 KiB
HEADER_LIMIT = 1 << 20  # a header line longer than this is not a CSV header (a binary file, most likely)
CHUNK = 4 << 20
NULL = "\\N"  # NULL in COPY's text format
_DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")
_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
LINES_PER_BATCH = 1 << 32  # raw_id = batch_id * 2^32 + line_no
COPY_COLUMNS = ("raw_id", "batch_id", "line_no", *SOURCE_COLUMNS, "raw_line", "user_id_bigint",
                "purchase_date_parsed", "purchase_date_is_real", "purchase_price_numeric", "purchase_price_scale",
                "purchase_units_numeric", "purchase_units_scale")


class IngestError(ValueError):
    """The file cannot be ingested (no file, not a CSV, missing or repeated columns); nothing was written."""


# ------------------------------------------------------------------------------------------------------
# typing (the same shapes as the rule list: kpi.crypto.rules; the validation cross-checks them)
# ------------------------------------------------------------------------------------------------------


def type_user_id(text: str) -> int | None:
    """USER_ID as a bigint: only plain ASCII digits, at most 18 of them (``^[0-9]+$``), else None."""
    return int(text) if text.isdigit() and text.isascii() and len(text) <= 18 else None


def type_date(text: str) -> tuple[dt.date | None, bool | None]:
    """(the day, is it real): ``D/M/YYYY`` with a year from 1000 is ``(date, True)``, the shape without such
    a day (31/2, month 13) ``(None, False)``, anything else ``(None, None)`` (as ``raw.parse_dmy``)."""
    match = _DATE.fullmatch(text)
    if match is None:
        return None, None
    day, month, year = int(match[1]), int(match[2]), int(match[3])
    if year < 1000:
        return None, False
    try:
        return dt.date(year, month, day), True
    except ValueError:
        return None, False


def type_number(text: str) -> tuple[str | None, int | None]:
    """(numeric text for the typed column, significant decimals) of a plain decimal (``^-?[0-9]+(\\.[0-9]+)?$``).

    None for anything else. The text itself when it has at most 20 significant integer digits and 20
    decimals; otherwise a stand-in that breaks the same rules (1e20 with the sign: too large; the decimals
    cut to 20, while the scale keeps the real count: too precise), so that Postgres never sees a number it
    cannot hold and the row still gets its true reason.
    """
    body = text[1:] if text[:1] == "-" else text
    whole, dot, decimals = body.partition(".")
    if not (whole.isdigit() and whole.isascii()) or (dot and not (decimals.isdigit() and decimals.isascii())):
        return None, None
    scale = len(decimals.rstrip("0"))
    if len(whole) <= NUMBER_DIGITS_KEPT and len(decimals) <= NUMBER_DIGITS_KEPT:
        return text, scale
    sign = "-" if body is not text else ""
    whole = whole.lstrip("0") or "0"
    if len(whole) > NUMBER_DIGITS_KEPT:
        whole = "1" + "0" * NUMBER_DIGITS_KEPT
    return f"{sign}{whole}.{decimals[:NUMBER_DIGITS_KEPT] or '0'}", scale


def window_day(purchase_date: dt.date | None, extract_date: dt.date) -> tuple[dt.date, bool]:
    """(the window day a row belongs to, is its purchase date usable): as ``raw.crypto_window_day``."""
    if purchase_date is not None and EARLIEST_PURCHASE_DATE <= purchase_date <= extract_date:
        return purchase_date, True
    return extract_date, False


# ------------------------------------------------------------------------------------------------------
# header and extract date
# ------------------------------------------------------------------------------------------------------


def map_header(header: list[str]) -> list[int]:
    """Positions of the six source columns in ``header`` (names case-insensitive, trimmed, any order).

    Raises:
        IngestError: naming a column that appears twice, or the columns that are missing.
    """
    names = [h.strip().lower().lstrip("\ufeff") for h in header]
    seen: dict[str, int] = {}
    for position, name in enumerate(names):
        if name in seen:
            raise IngestError(f"header {header!r} has column {header[position].strip()!r} twice (columns "
                              f"{seen[name] + 1} and {position + 1}): which one holds the values is ambiguous")
        seen[name] = position
    missing = [c.upper() for c in SOURCE_COLUMNS if c not in seen]
    if missing:
        raise IngestError(f"header {header!r} lacks column(s) {', '.join(missing)}; expected "
                          f"{', '.join(c.upper() for c in SOURCE_COLUMNS)} (any order, any case)")
    return [seen[c] for c in SOURCE_COLUMNS]


def extract_date_from_name(source: str) -> dt.date | None:
    """The last YYYY-MM-DD in a file name or URL, if any (the simulator and the landing convention)."""
    for candidate in reversed(_DATE_IN_NAME.findall(source)):
        try:
            return dt.date.fromisoformat(candidate)
        except ValueError:
            continue
    return None


def _parse_header(source: str, first: bytes) -> tuple[str, list[str], list[int]]:
    end = first.find(b"\n")
    if end < 0 and len(first) >= HEADER_LIMIT:
        raise IngestError(f"{source}: no line break in the first {HEADER_LIMIT} bytes: not a CSV text file")
    raw = first[: end if end >= 0 else len(first)].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r")
    if not raw.strip():
        raise IngestError(f"{source} is empty: expected a header line")
    if b"\x00" in raw:
        raise IngestError(f"{source}: the header line holds NUL bytes: a binary file, not a CSV")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{source}: the header line is not UTF-8 text ({exc.reason} at byte {exc.start}):"
                          " a binary file or another encoding") from None
    try:
        header = next(csv.reader([text], strict=True))
        return text, header, map_header(header)
    except (csv.Error, IngestError) as exc:
        # a binary file can start with a text line (%PDF-1.7): say what the file is, not only what it lacks
        sample = first[:1 << 16]
        try:
            binary = b"\x00" in sample or not sample.decode("utf-8", errors="strict")
        except UnicodeDecodeError as undecodable:
            binary = undecodable.start < len(sample) - 4  # a cut multi-byte character at the end is fine
        what = "a binary file, not a CSV text file: " if binary else ""
        raise IngestError(f"{source}: {what}{exc}") from None


# ------------------------------------------------------------------------------------------------------
# lines -> COPY rows
# ------------------------------------------------------------------------------------------------------


def _escape(value: str) -> str:
    """A value in COPY's text format (NUL cannot be stored: it is kept as the four characters ``\\x00``)."""
    return (value.replace("\x00", "\\x00").replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _number_copy(text: str) -> str:
    """``numeric<TAB>scale`` of :func:`type_number` in COPY's text format."""
    typed, scale = type_number(text)
    return f"{NULL if typed is None else typed}\t{NULL if scale is None else scale}"


def _plain_number(text: str) -> str | None:
    """``numeric<TAB>scale`` in COPY's text format for an unsigned plain decimal of at most 20 integer digits and
    20 decimals (the text as it is: what :func:`type_number` gives such a number), else None."""
    if text.isascii():
        whole, dot, decimals = text.partition(".")
        if whole.isdigit() and len(whole) <= NUMBER_DIGITS_KEPT and (
                not dot or (decimals.isdigit() and len(decimals) <= NUMBER_DIGITS_KEPT)):
            return f"{text}\t{len(decimals.rstrip('0'))}"
    return None


@dataclass
class _Lines:
    """Turns a file's lines into COPY rows and counts what the batch holds (rows, malformed, days)."""

    batch_id: int
    positions: list[int]
    width: int
    rows: int = 0
    malformed: int = 0
    dates: dict = field(default_factory=dict)  # purchase date text -> [COPY text, purchase date or None, rows]
    per_date: dict = field(default_factory=dict)  # purchase date or None -> rows not counted in `dates`

    def __post_init__(self) -> None:
        self.identity = self.positions == list(range(6)) and self.width == 6
        self.base = self.batch_id * LINES_PER_BATCH
        self.prefix = f"\t{self.batch_id}\t"
        self.malformed_tail = "\t".join([NULL] * 6)
        self.untyped = "\t".join([NULL] * 7)

    def _date(self, text: str) -> str:
        found = self.dates.get(text)
        if found is None:
            day, real = type_date(text)
            found = [f"{day.isoformat() if day else NULL}\t{NULL if real is None else 't' if real else 'f'}", day, 0]
            if len(self.dates) >= 100_000:  # a hostile file with millions of distinct dates is typed row by row
                self.per_date[day] = self.per_date.get(day, 0) + 1
                return found[0]
            self.dates[text] = found
        found[2] += 1
        return found[0]

    def _typed(self, user: str, date: str, price: str, units: str) -> str:
        return (f"{NULL if type_user_id(user) is None else user}\t{self._date(date)}\t"
                f"{_number_copy(price)}\t{_number_copy(units)}")

    def copy_text(self, lines: list[str], first_line_no: int) -> str:
        """COPY rows of ``lines`` (without line breaks, a CR before the break removed) numbered from
        ``first_line_no``."""
        if first_line_no + len(lines) >= LINES_PER_BATCH:
            raise IngestError(f"more than {LINES_PER_BATCH - 1} lines in one file")
        out = []
        append, base, prefix, dates = out.append, self.base, self.prefix, self.dates
        identity, blank = self.identity, 0
        for line_no, line in enumerate(lines, first_line_no):
            if not line:
                blank += 1  # a blank line: nothing was sent
                continue
            # almost every row: no character that needs care (quote, backslash, tab, CR, NUL), six fields, a plain
            # user id and unsigned plain numbers; it is copied as it is, typed by string tests
            if identity and not ('"' in line or "\\" in line or "\t" in line or "\r" in line or "\x00" in line):
                values = line.split(",")
                if len(values) == 6:
                    _, user, date, _, price, units = values
                    if user.isdigit() and user.isascii() and len(user) <= 18:
                        typed_price = _plain_number(price)
                        typed_units = _plain_number(units) if typed_price else None
                        if typed_units:
                            found = dates.get(date)
                            if found is None:
                                typed_date = self._date(date)
                            else:
                                found[2] += 1
                                typed_date = found[0]
                            append(f"{base + line_no}{prefix}{line_no}\t{line.replace(',', chr(9))}\t{NULL}\t{user}\t"
                                   f"{typed_date}\t{typed_price}\t{typed_units}\n")
                            continue
            try:
                record = next(csv.reader([line], strict=True))
            except csv.Error:
                record = None  # an unmatched or stray quote: this line only
            if record is None or len(record) != self.width:
                self.malformed += 1
                self.per_date[None] = self.per_date.get(None, 0) + 1
                append(f"{base + line_no}{prefix}{line_no}\t{self.malformed_tail}\t{_escape(line)}\t{self.untyped}\n")
                continue
            values = [record[p].replace("\x00", "\\x00") for p in self.positions]
            append(f"{base + line_no}{prefix}{line_no}\t{chr(9).join(_escape(v) for v in values)}\t{NULL}\t"
                   f"{self._typed(values[1], values[2], values[4], values[5])}\n")
        self.rows += len(lines) - blank
        return "".join(out)

    def days(self, extract_date: dt.date) -> dict[dt.date, list[int]]:
        """Window day -> [rows with a usable purchase date, rows without one] of the lines seen."""
        counts = dict(self.per_date)
        for _, day, rows in self.dates.values():
            counts[day] = counts.get(day, 0) + rows
        days: dict[dt.date, list[int]] = {}
        for day, rows in counts.items():
            target, usable = window_day(day, extract_date)
            days.setdefault(target, [0, 0])[0 if usable else 1] += rows
        return days


def _blocks(stream, digest) -> Iterator[tuple[bytes, int]]:
    """(bytes of whole lines, index of the block) of a binary stream, hashing every byte."""
    rest = b""
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        digest.update(chunk)
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        rest = data[cut:]
        yield data[:cut]
    if rest:
        yield rest + b"\n"


def _sha256(fs, path: str) -> tuple[str, bytes]:
    """(sha256 of the file, its first bytes for the header)."""
    digest = hashlib.sha256()
    first = b""
    with fs.open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            if len(first) < HEADER_LIMIT:
                first += chunk[: HEADER_LIMIT - len(first)]
            digest.update(chunk)
    return digest.hexdigest(), first


# ------------------------------------------------------------------------------------------------------
# ingest
# ------------------------------------------------------------------------------------------------------


def _previous(conn: psycopg.Connection, sha: str, settings: Settings) -> int | None:
    found = conn.execute(sql("ingest:previous", settings), {"sha": sha}).fetchone()
    return found[0] if found else None


def ingest_file(source: str, *, extract_date: dt.date | None = None, force: bool = False,
                settings: Settings | None = None, database_url: str | None = None,
                archived_url: str | None = None) -> dict:
    """Load one CSV into raw with COPY, in one transaction.

    Args:
        source: local path, ``file://`` or ``s3://`` URL.
        extract_date: the day the upstream system produced the file. Default: the last YYYY-MM-DD in the
            name, else the ingest date (UTC). Never the rows' dates: one typo year must not move it.
        force: ingest even when identical content was ingested before (a deliberate copy).
        settings: settings (storage options for s3).
        database_url: warehouse URL (default: settings).
        archived_url: where the file will be kept after this ingest (the landing step), recorded with the batch.

    Returns:
        ``{batch_id, source, rows, malformed_rows, extract_date, extract_date_source, content_sha256,
        duplicate_of, forced, seconds}``; ``batch_id`` is None when the content was ingested before.

    Raises:
        IngestError: the file does not exist, is not a CSV text file, or its header is unusable (nothing
            is written); or it changed while being read.
    """
    from kpi.db import connect
    from kpi.db import database_url as configured_url
    from kpi.storage import filesystem

    began = time.perf_counter()
    settings = settings or get_settings()
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))  # a huge quoted field is a value, not an error
    fs, path = filesystem(source, settings)
    if not fs.exists(path) or fs.isdir(path):
        raise IngestError(f"{source} does not exist or is not a file")
    sha, first = _sha256(fs, path)
    header_text, header, positions = _parse_header(source, first)
    ingested_at = dt.datetime.now(dt.UTC)
    if extract_date is not None:
        date_source = "option"
    elif (extract_date := extract_date_from_name(source)) is not None:
        date_source = "file_name"
    else:
        extract_date, date_source = ingested_at.date(), "ingest_date"
    summary = {"batch_id": None, "source": source, "rows": 0, "malformed_rows": 0, "extract_date": extract_date,
               "extract_date_source": date_source, "content_sha256": sha, "duplicate_of": None, "forced": False}
    with connect(database_url or configured_url(settings)) as conn:
        previous = _previous(conn, sha, settings)
        conn.commit()
        if previous is not None and not force:
            return {**summary, "duplicate_of": previous, "seconds": round(time.perf_counter() - began, 3),
                    "note": "identical content was ingested before; nothing added (use --force to add it again)"}
        try:
            batch_id = conn.execute(sql("ingest:open_batch", settings), {
                "source": source, "sha": sha, "extract_date": extract_date, "extract_date_source": date_source,
                "header": header_text, "ingested_at": ingested_at, "forced": previous is not None,
                "archived_url": archived_url}).fetchone()[0]
        except psycopg.errors.UniqueViolation:
            # the same bytes were being ingested at the same time and that ingest committed first
            conn.rollback()
            return {**summary, "duplicate_of": _previous(conn, sha, settings),
                    "seconds": round(time.perf_counter() - began, 3),
                    "note": "identical content was ingested at the same time by another ingest; nothing added"}
        lines = _Lines(batch_id, positions, len(header))
        digest = hashlib.sha256()
        copy_sql = f"COPY raw.bt_crypto_transaction_history ({', '.join(COPY_COLUMNS)}) FROM STDIN"
        with conn.cursor() as cur, cur.copy(copy_sql, writer=psycopg.copy.QueuedLibpqWriter(cur)) as copy, \
                fs.open(path, "rb") as stream:
            line_no = 1
            for index, block in enumerate(_blocks(stream, digest)):
                text = block.decode("utf-8", errors="backslashreplace").replace("\r\n", "\n").split("\n")[:-1]
                if index == 0:
                    text = text[1:]  # the header (BOM and all) was read in the first pass
                    line_no = 2
                copy.write(lines.copy_text(text, line_no))
                line_no += len(text)
        if digest.hexdigest() != sha:
            conn.rollback()
            raise IngestError(f"{source} changed while it was being ingested (sha256 {sha} before, "
                              f"{digest.hexdigest()} after): nothing was written; ingest it again")
        with conn.cursor() as cur:
            cur.executemany(sql("ingest:batch_day", settings), [
                {"batch_id": batch_id, "window_date": day, "dated_rows": dated, "undated_rows": undated}
                for day, (dated, undated) in lines.days(extract_date).items()])
        conn.execute(sql("ingest:close_batch", settings),
                     {"rows": lines.rows, "malformed": lines.malformed, "batch_id": batch_id})
        conn.commit()
    return {**summary, "batch_id": batch_id, "rows": lines.rows, "malformed_rows": lines.malformed,
            "duplicate_of": previous, "forced": previous is not None, "seconds": round(time.perf_counter() - began, 3)}


def ingest_many(sources: list[str], **kwargs) -> dict:
    """Ingest several files in order, each in its own transaction; a bad file does not stop the others.

    Returns:
        ``{files: [summary per ingested or duplicate file], failed: [{source, error}], rows, malformed_rows,
        skipped_duplicates}``.
    """
    files, failed = [], []
    for source in sources:
        try:
            files.append(ingest_file(source, **kwargs))
        except (IngestError, OSError, UnicodeError) as exc:
            failed.append({"source": source, "error": f"{type(exc).__name__}: {exc}"})
    return {"files": files, "failed": failed, "rows": sum(f["rows"] for f in files),
            "malformed_rows": sum(f["malformed_rows"] for f in files),
            "skipped_duplicates": sum(1 for f in files if f["batch_id"] is None)}
