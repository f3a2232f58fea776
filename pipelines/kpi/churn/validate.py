"""Validate the five churn sources row by row: bad rows are quarantined, structural problems are fatal.

Like the crypto pipeline, every row is checked against one rule table (:data:`RULES`, applied per column
by :func:`column_rules`) and a row that breaks a rule is left out and recorded with file, line, key,
column, rule and value. What is checked:

- **structure** (fatal at once, before any row is read): every file exists, its header has exactly the
  expected columns (``SNAPSHOT_DATE`` allowed on the three snapshot tables), it has at least one row and
  it reads as CSV;
- **rows**: required values, strict types (ASCII digits only, decimal notation, real calendar dates),
  column ranges, the snapshot rule (dates inside a snapshot come before its ``SNAPSHOT_DATE``), unique
  keys (every copy of a duplicated key is left out), and referential integrity (every user of the other
  four files exists in the user base, ``DEMOGRAFICOS.csv``); a line with the wrong number of fields and
  a value that is not UTF-8 are bad rows too;
- **unknown categories** (a new ``CARD_TYPE``, ``GENDER`` or ``INVERSION`` value) are counted but kept:
  the model scores them as unseen.

The gate: training, scoring and drift go on when each file's share of bad rows is at most
``KPI_CHURN_MAX_BAD_ROW_SHARE`` (default 1%) and fail naming the file, the share and the rules above it.
Every row of every file is checked, whatever the size (pyarrow's streaming CSV reader and RE2 kernels;
nothing is sampled). The outcome lives under ``<KPI_STORAGE_URL>/churn/source-validation/<data_version>/``:
``summary.json`` (counts per file and rule), ``bad_rows.parquet`` (one row per broken rule) and
``clean/<FILE>.parquet`` (the typed rows that passed, which Spark and pandas read: no CSV is parsed a
second time, so no malformed value can turn into a number or a NULL behind validation's back).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kpi.churn.sources import (
    COLUMN_TYPES,
    ID,
    SNAPSHOT_DATE,
    SNAPSHOT_SOURCES,
    SOURCE_FILES,
    USER_BASE,
    check_columns,
    read_header,
    source_url,
)
from kpi.settings import Settings

log = logging.getLogger(__name__)

# Bump when a rule changes: a stored validation made under other rules is then redone, never reused.
RULES_VERSION = 2
VALIDATION_PREFIX = ("churn", "source-validation")
SUMMARY_FILE = "summary.json"
BAD_ROWS_FILE = "bad_rows.parquet"
CLEAN_FOLDER = "clean"
BLOCK_BYTES = 1 << 24  # 16 MiB of CSV per block: bounded memory at any file size
MAX_VALUE_CHARS = 200  # a recorded bad value (or malformed line) is cut to this length
EXAMPLES_PER_RULE = 3

# Strict textual shapes: ASCII digits only ([0-9], never \d), decimal notation (no exponent, inf or nan).
TYPE_PATTERNS = {
    "id": r"^[0-9]{1,18}$",
    "int": r"^-?[0-9]{1,9}$",
    "float": r"^-?[0-9]{1,15}(\.[0-9]+)?$",
    "date": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
}
REQUIRED = {
    "payments": ["FECHA", "CUS_CUST_ID_SEL", ID, "SPENT", "TPV_SEGMENT_DETAIL", "DESCUENTO"],
    "active_user": [ID, "MAU_MP_1", "MAU_ML_1", "MAU_ML_2"],
    "demograficos": [ID],
    "dinero_cuenta": [ID, "PLATA_CUENTA_1", "PLATA_CUENTA_2"],
    "marketplace": [ID, "SPENT_ML", "FREQUENCY_ML"],
}
RANGES = {
    "payments": {"SPENT": (0.0, 10_000_000.0), "DESCUENTO": (0.0, 1.0)},
    "active_user": {"MAU_MP_1": (0, 31), "MAU_ML_1": (0, 31), "MAU_ML_2": (0, 31)},
    "demograficos": {"AGE": (14, 110)},
    "dinero_cuenta": {"PLATA_CUENTA_1": (0.0, 1e10), "PLATA_CUENTA_2": (0.0, 1e10)},
    "marketplace": {"SPENT_ML": (0.0, 1e9), "FREQUENCY_ML": (0, 100_000)},
}
DATE_RANGE = (dt.date(2000, 1, 1), dt.date(2100, 1, 1))
# Categories the model knows; compared after the cleaning the features apply (trim, and upper case where
# the feature is upper-cased), so the count is what the model will meet as unseen.
VALUE_SETS = {
    "demograficos": {"GENDER": (["F", "M", "X"], True), "CARD_TYPE": (["CLASSIC", "GOLD", "PLATINUM", "BLACK"], True)},
    "dinero_cuenta": {"INVERSION": (["Investing", "Eligible", "Pending", "Warmup"], False)},
}
# (file, column that must be strictly before SNAPSHOT_DATE): a snapshot only describes its past
BEFORE_SNAPSHOT = {"active_user": "last_login_mp_date_1", "marketplace": "RECENCY_ML"}

QUARANTINE, KEPT = "quarantined", "kept_as_unseen"


@dataclass(frozen=True)
class Rule:
    """One rule of the table: its machine-readable name, what it means, and what happens to the row."""

    name: str
    description: str
    action: str = QUARANTINE


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("malformed_line", "the line does not have the header's number of fields"),
        Rule("not_utf8", "the value is not valid UTF-8"),
        Rule("missing", "a required value is empty"),
        Rule("not_an_id", "must be an integer id of at most 18 ASCII digits"),
        Rule("not_an_integer", "must be an integer in ASCII digits"),
        Rule("not_a_number", "must be a number in ASCII decimal notation (no exponent, inf or nan)"),
        Rule("not_a_date", "must be a real calendar date YYYY-MM-DD"),
        Rule("out_of_range", "outside the column's range"),
        Rule("not_before_snapshot", f"must be before {SNAPSHOT_DATE} (a snapshot describes only its past)"),
        Rule("duplicate_key", "the key occurs more than once; every copy is left out"),
        Rule("unknown_user", f"the user is not in the user base {SOURCE_FILES[USER_BASE]}"),
        Rule("unknown_category", "a category the model has not seen: kept, scored as unseen", KEPT),
    )
}
TYPE_RULE = {"id": "not_an_id", "int": "not_an_integer", "float": "not_a_number", "date": "not_a_date"}
BAD_ROW_COLUMNS = ["file", "line", "key", "column", "rule", "value", "action"]


class SourceValidationError(ValueError):
    """The churn sources cannot be used; the message lists every reason (file, column, rule, counts).

    Attributes:
        failures: one line per problem.
        results_url: the stored validation summary, when there is one.
        kind: ``structure`` (a file is missing, unreadable or has the wrong columns) or ``bad_rows``
            (a file's share of bad rows is above ``KPI_CHURN_MAX_BAD_ROW_SHARE``).
    """

    def __init__(self, failures: list[str], results_url: str | None = None, kind: str = "bad_rows"):
        self.failures = failures
        self.results_url = results_url
        self.kind = kind
        lines = "\n  - ".join(failures)
        where = f" (results: {results_url})" if results_url else ""
        super().__init__(f"churn sources failed validation{where}:\n  - {lines}")


@dataclass(frozen=True)
class ValidatedSources:
    """Sources that passed the gate: where their clean typed copy lives and what validation found."""

    data_url: str
    data_version: str
    summary: dict = field(repr=False)

    @property
    def clean_url(self) -> str:
        """Folder of ``<FILE>.parquet``, the typed rows that passed (one file per source)."""
        return self.summary["clean_url"]

    def clean_file(self, source: str) -> str:
        """URL of the clean Parquet file of one source (a key of :data:`SOURCE_FILES`)."""
        from kpi.storage import join

        return join(self.clean_url, clean_name(source))

    def dated(self, source: str) -> bool:
        """True when the source file carries ``SNAPSHOT_DATE``."""
        return bool(self.summary["files"][SOURCE_FILES[source]].get("dated"))

    def snapshot_dates(self, source: str) -> tuple[dt.date, dt.date] | None:
        """Earliest and latest ``SNAPSHOT_DATE`` among the clean rows of a dated source (None otherwise)."""
        span = self.summary["files"][SOURCE_FILES[source]].get("snapshot_dates")
        return (dt.date.fromisoformat(span[0]), dt.date.fromisoformat(span[1])) if span else None


def clean_name(source: str) -> str:
    """``PAYMENTS.csv`` -> ``PAYMENTS.parquet``."""
    return SOURCE_FILES[source].rsplit(".", 1)[0] + ".parquet"


def validation_url(settings: Settings, data_version: str) -> str:
    """``<KPI_STORAGE_URL>/churn/source-validation/<data_version>``."""
    from kpi.storage import join

    return join(settings.resolved_storage_url, *VALIDATION_PREFIX, data_version)


# --------------------------------------------------------------------------------------------------
# structure: fatal at once
# --------------------------------------------------------------------------------------------------


def check_structure(data_url: str, settings: Settings) -> tuple[dict[str, list[str]], list[str]]:
    """Headers of the five files and the structural failures (missing file, columns, no rows).

    Reads only the first bytes of each file.
    """
    from kpi.storage import filesystem

    headers: dict[str, list[str]] = {}
    failures: list[str] = []
    for source, name in SOURCE_FILES.items():
        fs, path = filesystem(source_url(data_url, source), settings)
        if not fs.exists(path):
            failures.append(f"{name}: file is missing under {data_url}")
            continue
        try:
            header = read_header(data_url, source, settings)
        except UnicodeDecodeError as exc:
            failures.append(f"{name}: unreadable: the header is not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        if not header:
            failures.append(f"{name}: file is empty (no header, no rows)")
            continue
        try:
            check_columns(source, header)
        except ValueError as exc:
            failures.append(str(exc))
            continue
        with fs.open(path, "rb") as fh:
            fh.readline()
            has_row = any(line.strip() for line in _first_lines(fh))
        if not has_row:
            failures.append(f"{name}: file has a header but no rows")
            continue
        headers[source] = header
    return headers, failures


def _first_lines(fh, limit: int = 1000):
    for _ in range(limit):
        line = fh.readline()
        if not line:
            return
        yield line


# --------------------------------------------------------------------------------------------------
# rows: one pass per file, every row
# --------------------------------------------------------------------------------------------------


def _arrow_type(kind: str):
    import pyarrow as pa

    return {"id": pa.int64(), "int": pa.int32(), "float": pa.float64(), "date": pa.date32(), "string": pa.string()}[kind]


def _lines_of_batch(base: int, rows: int, skipped: list[int]):
    """Line numbers of the ``rows`` rows the reader emitted from line ``base`` on, around skipped lines.

    The reader reports malformed lines (skipped) by line number, possibly for the next block too, so the
    batch's lines are the next ``rows`` numbers from ``base`` that are not skipped.
    """
    import numpy as np

    s = np.asarray(skipped, dtype="int64")
    extra = 0
    while True:
        hi = base + rows + extra
        now = int(((s >= base) & (s < hi)).sum()) if len(s) else 0
        if now == extra:
            break
        extra = now
    span = np.arange(base, hi, dtype="int64")
    return (span[~np.isin(span, s)] if extra else span), hi


class _BadRows:
    """The bad-row records of one validation, streamed to one Parquet file."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self.path = path
        self.schema = pa.schema(
            [("file", pa.string()), ("line", pa.int64()), ("key", pa.string()), ("column", pa.string()),
             ("rule", pa.string()), ("value", pa.string()), ("action", pa.string())]
        )
        self.writer = None
        self.records = 0

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        if table.num_rows == 0:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.path), self.schema)
        self.writer.write_table(table.cast(self.schema))
        self.records += table.num_rows

    def close(self) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            pq.write_table(self.schema.empty_table(), str(self.path))
        else:
            self.writer.close()


@dataclass
class _FileReport:
    """What one file's pass found (turned into the summary's per-file entry)."""

    name: str
    dated: bool
    rows: int = 0
    blank_lines: int = 0
    bad_rows: int = 0
    quarantined_rows: int = 0
    clean_rows: int = 0
    by_rule: Counter = field(default_factory=Counter)
    by_column: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    snapshot_dates: list[str] | None = None
    seconds: float = 0.0

    def record(self, table) -> None:
        """Count one block of bad-row records and keep the first few as examples."""
        if table.num_rows == 0:
            return
        rules = table.column("rule").to_pylist()
        columns = table.column("column").to_pylist()
        self.by_rule.update(rules)
        self.by_column.update(f"{c or '(line)'}: {r}" for c, r in zip(columns, rules))
        for rule in set(rules):
            have = self.examples.setdefault(rule, [])
            if len(have) >= EXAMPLES_PER_RULE:
                continue
            import pyarrow.compute as pc

            picked = table.filter(pc.equal(table.column("rule"), rule)).slice(0, EXAMPLES_PER_RULE - len(have))
            have.extend(
                {k: v for k, v in r.items() if k in ("line", "key", "column", "value")} for r in picked.to_pylist()
            )

    def as_dict(self) -> dict:
        share = self.bad_rows / self.rows if self.rows else 0.0
        return {
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "bad_share": share,
            "quarantined_rows": self.quarantined_rows,
            "kept_as_unseen_rows": self.bad_rows - self.quarantined_rows,
            "clean_rows": self.clean_rows,
            "blank_lines": self.blank_lines,
            "dated": self.dated,
            "snapshot_dates": self.snapshot_dates,
            "by_rule": dict(self.by_rule.most_common()),
            "by_column": dict(self.by_column.most_common()),
            "examples": self.examples,
            "seconds": round(self.seconds, 3),
        }


def _decode(column):
    """Binary CSV values as UTF-8 strings, and the mask of values that are not UTF-8 (set to null)."""
    import numpy as np
    import pyarrow as pa

    try:
        return column.cast(pa.string()), None
    except pa.ArrowInvalid:
        values = column.to_pylist()
        bad = np.zeros(len(values), dtype=bool)
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError:
                bad[i] = True
                out.append(None)
        return pa.array(out, pa.string()), bad


def _typed(text, kind: str):
    """``(typed, malformed)``: the parsed column (null where empty or malformed) and the malformed mask."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "string":
        return text, None
    present = pc.is_valid(text)
    if kind == "date":
        # a file holds few distinct dates: check each distinct value once, then map back to the rows
        encoded = pc.dictionary_encode(text)
        typed_values, ok_values = _parse_dates(encoded.dictionary)
        typed = pc.take(typed_values, encoded.indices)
        ok = pc.take(ok_values, encoded.indices)
    else:
        ok = pc.and_(present, pc.match_substring_regex(text, TYPE_PATTERNS[kind]))
        typed = pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), _arrow_type(kind))
    malformed = pc.and_(present, pc.invert(pc.fill_null(ok, False)))
    return typed, malformed


def _parse_dates(values):
    """``(date32, ok)`` of distinct date strings: ok only for a real calendar date written YYYY-MM-DD."""
    import pyarrow as pa
    import pyarrow.compute as pc

    shaped = pc.fill_null(pc.match_substring_regex(values, TYPE_PATTERNS["date"]), False)
    stamp = pc.strptime(pc.if_else(shaped, values, pa.scalar(None, pa.string())), format="%Y-%m-%d", unit="s",
                        error_is_null=True)
    # strptime rolls 2024-02-30 over to 2024-03-01: a date is real only if it prints back the same
    real = pc.fill_null(pc.equal(pc.strftime(stamp, format="%Y-%m-%d"), values), False)
    return pc.if_else(real, pc.cast(stamp, pa.date32()), pa.scalar(None, pa.date32())), real


def _np(mask):
    import numpy as np

    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        return mask
    return mask.to_numpy(zero_copy_only=False).astype(bool)


def column_rules(source: str, header: list[str]) -> list[tuple[str, str]]:
    """``(column, rule)`` pairs checked on every row of one file (for people and the docs' table)."""
    types = COLUMN_TYPES[source]
    dated = SNAPSHOT_DATE in header
    pairs = [(None, "malformed_line")]
    pairs += [(c, "not_utf8") for c in header]
    pairs += [(c, "missing") for c in [*REQUIRED[source], *([SNAPSHOT_DATE] if dated else [])]]
    pairs += [(c, TYPE_RULE[types[c]]) for c in header if types[c] in TYPE_RULE]
    pairs += [(c, "out_of_range") for c in RANGES.get(source, {})]
    pairs += [(c, "out_of_range") for c in header if types[c] == "date"]
    if dated and source in BEFORE_SNAPSHOT:
        pairs.append((BEFORE_SNAPSHOT[source], "not_before_snapshot"))
    pairs += [(c, "unknown_category") for c in VALUE_SETS.get(source, {})]
    if source == USER_BASE or source in SNAPSHOT_SOURCES:
        pairs.append((ID, "duplicate_key"))
    if source != USER_BASE:
        pairs.append((ID, "unknown_user"))
    return pairs


def _check_block(source: str, header: list[str], batch, base_ids) -> tuple[dict, list[tuple[str, str, Any]]]:
    """Typed columns of one block and the violations ``(column, rule, mask)`` of every row rule."""
    import pyarrow as pa
    import pyarrow.compute as pc

    types = COLUMN_TYPES[source]
    text: dict[str, Any] = {}
    typed: dict[str, Any] = {}
    violations: list[tuple[str, str, Any]] = []
    for col in header:
        decoded, not_utf8 = _decode(batch.column(col))
        if not_utf8 is not None and not_utf8.any():
            violations.append((col, "not_utf8", not_utf8))
        text[col] = decoded
        typed[col], malformed = _typed(decoded, types[col])
        if malformed is not None:
            violations.append((col, TYPE_RULE[types[col]], malformed))
    dated = SNAPSHOT_DATE in header
    for col in [*REQUIRED[source], *([SNAPSHOT_DATE] if dated else [])]:
        # empty as written (a value that is not UTF-8 is reported as such, not as missing)
        violations.append((col, "missing", batch.column(col).is_null()))
    for col, (lo, hi) in RANGES.get(source, {}).items():
        value = typed[col]
        outside = pc.or_(pc.less(value, pa.scalar(lo).cast(value.type)), pc.greater(value, pa.scalar(hi).cast(value.type)))
        violations.append((col, "out_of_range", pc.fill_null(outside, False)))
    lo_date, hi_date = (pa.scalar(d, pa.date32()) for d in DATE_RANGE)
    for col in header:
        if types[col] == "date":
            value = typed[col]
            outside = pc.or_(pc.less(value, lo_date), pc.greater_equal(value, hi_date))
            violations.append((col, "out_of_range", pc.fill_null(outside, False)))
    if dated and source in BEFORE_SNAPSHOT:
        col = BEFORE_SNAPSHOT[source]
        late = pc.greater_equal(typed[col], typed[SNAPSHOT_DATE])
        violations.append((col, "not_before_snapshot", pc.fill_null(late, False)))
    for col, (allowed, upper) in VALUE_SETS.get(source, {}).items():
        clean = pc.utf8_trim_whitespace(text[col])
        clean = pc.utf8_upper(clean) if upper else clean
        present = pc.and_(pc.is_valid(clean), pc.not_equal(clean, ""))
        unknown = pc.and_(pc.fill_null(present, False), pc.invert(pc.is_in(clean, value_set=pa.array(allowed))))
        violations.append((col, "unknown_category", pc.fill_null(unknown, False)))
    if source != USER_BASE and base_ids is not None:
        ids = typed[ID]
        unknown = pc.and_(pc.is_valid(ids), pc.invert(pc.is_in(ids, value_set=base_ids)))
        violations.append((ID, "unknown_user", pc.fill_null(unknown, False)))
    violations = [(c, r, _np(m)) for c, r, m in violations]
    return {"text": text, "typed": typed}, [(c, r, m) for c, r, m in violations if m.any()]


def _cut(values):
    """Recorded values: at most MAX_VALUE_CHARS characters."""
    import pyarrow.compute as pc

    return pc.utf8_slice_codeunits(values, 0, MAX_VALUE_CHARS)


def _keys(text: dict, header: list[str], idx):
    """The key of each recorded row: the user id as written, with ``@SNAPSHOT_DATE`` for dated tables."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pc.take(text[ID], idx)
    if SNAPSHOT_DATE in header:
        ids = pc.binary_join_element_wise(
            ids, pc.take(text[SNAPSHOT_DATE], idx), "@", null_handling="replace", null_replacement=""
        )
    return _cut(ids.cast(pa.string()))


def _validate_file(data_url, source, header, settings, base_ids, bad_rows: _BadRows, clean_path: Path) -> tuple[_FileReport, Any]:
    """One streamed pass over one file: record bad rows, write the typed clean rows; returns the report and,
    for the user base, the ids it holds."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from kpi.storage import filesystem

    name = SOURCE_FILES[source]
    started = time.perf_counter()
    report = _FileReport(name=name, dated=SNAPSHOT_DATE in header)
    skipped: list[int] = []
    malformed: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        skipped.append(int(row.number))
        malformed.append((int(row.number), row.text))
        return "skip"

    read = pacsv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES, column_names=header, skip_rows=1)
    parse = pacsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.binary() for c in header}, strings_can_be_null=True, null_values=[""],
        quoted_strings_can_be_null=True,
    )
    schema = pa.schema([(c, _arrow_type(COLUMN_TYPES[source][c])) for c in header])
    unique = source == USER_BASE or source in SNAPSHOT_SOURCES
    key_ids, key_dates, key_lines = [], [], []
    ids_seen = []
    writer = pq.ParquetWriter(str(clean_path), schema)
    base = 2  # line 1 is the header
    fs, path = filesystem(source_url(data_url, source), settings)
    try:
        with fs.open(path, "rb") as fh:
            reader = pacsv.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                lines, base = _lines_of_batch(base, batch.num_rows, skipped)
                # a blank line is not a row (every field empty): skip it, count it
                blank = np.ones(batch.num_rows, dtype=bool)
                for col in header:
                    blank &= batch.column(col).is_null().to_numpy(zero_copy_only=False)
                if blank.any():
                    report.blank_lines += int(blank.sum())
                    batch = batch.filter(pa.array(~blank))
                    lines = lines[~blank]
                n = batch.num_rows
                report.rows += n
                if n == 0:
                    continue
                cols, violations = _check_block(source, header, batch, base_ids)
                quarantine = np.zeros(n, dtype=bool)
                bad = np.zeros(n, dtype=bool)
                records = []
                for col, rule, mask in violations:
                    bad |= mask
                    if RULES[rule].action == QUARANTINE:
                        quarantine |= mask
                    idx = pa.array(np.flatnonzero(mask))
                    records.append(pa.table({
                        "file": pa.array([name] * len(idx), pa.string()),
                        "line": pa.array(lines[idx.to_numpy()]),
                        "key": _keys(cols["text"], header, idx),
                        "column": pa.array([col] * len(idx), pa.string()),
                        "rule": pa.array([rule] * len(idx), pa.string()),
                        "value": _cut(pc.take(cols["text"][col], idx)) if rule != "not_utf8" else pa.array(
                            [repr(v)[2:-1][:MAX_VALUE_CHARS] for v in pc.take(batch.column(col), idx).to_pylist()],
                            pa.string()),
                        "action": pa.array([RULES[rule].action] * len(idx), pa.string()),
                    }))
                if records:
                    table = pa.concat_tables(records)
                    bad_rows.write(table)
                    report.record(table)
                report.bad_rows += int(bad.sum())
                report.quarantined_rows += int(quarantine.sum())
                keep = pa.array(~quarantine)
                clean = pa.table({c: cols["typed"][c] for c in header}, schema=schema).filter(keep)
                writer.write_table(clean)
                if source == USER_BASE:
                    ids_seen.append(pc.drop_null(cols["typed"][ID]))
                if unique:
                    key_ids.append(clean.column(ID).to_numpy())
                    key_dates.append(
                        clean.column(SNAPSHOT_DATE).cast(pa.int32()).to_numpy()
                        if report.dated else np.zeros(clean.num_rows, dtype="int32")
                    )
                    key_lines.append(lines[~quarantine])
    except pa.ArrowInvalid as exc:
        writer.close()
        raise SourceValidationError([f"{name}: unreadable as CSV: {exc}"], kind="structure") from None
    writer.close()
    # malformed lines (wrong number of fields) never reached a batch: record them as bad rows
    if malformed:
        table = pa.table({
            "file": pa.array([name] * len(malformed), pa.string()),
            "line": pa.array([m[0] for m in malformed], pa.int64()),
            "key": pa.array([None] * len(malformed), pa.string()),
            "column": pa.array([None] * len(malformed), pa.string()),
            "rule": pa.array(["malformed_line"] * len(malformed), pa.string()),
            "value": pa.array([m[1][:MAX_VALUE_CHARS] for m in malformed], pa.string()),
            "action": pa.array([QUARANTINE] * len(malformed), pa.string()),
        })
        bad_rows.write(table)
        report.record(table)
        report.rows += len(malformed)
        report.bad_rows += len(malformed)
        report.quarantined_rows += len(malformed)
    if unique:
        _drop_duplicate_keys(report, header, clean_path, schema, key_ids, key_dates, key_lines, bad_rows)
    table_meta = pq.ParquetFile(str(clean_path)).metadata
    report.clean_rows = table_meta.num_rows
    if report.dated and report.clean_rows:
        dates = pq.read_table(str(clean_path), columns=[SNAPSHOT_DATE]).column(SNAPSHOT_DATE)
        bounds = pc.min_max(dates)
        report.snapshot_dates = [bounds["min"].as_py().isoformat(), bounds["max"].as_py().isoformat()]
    report.seconds = time.perf_counter() - started
    user_ids = pc.unique(pa.chunked_array(ids_seen, pa.int64()).combine_chunks()) if source == USER_BASE else None
    return report, user_ids


def _drop_duplicate_keys(report, header, clean_path, schema, key_ids, key_dates, key_lines, bad_rows) -> None:
    """Leave out every copy of a key that occurs more than once (which copy is right cannot be known)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.concatenate(key_ids) if key_ids else np.zeros(0, dtype="int64")
    dates = np.concatenate(key_dates) if key_dates else np.zeros(0, dtype="int32")
    lines = np.concatenate(key_lines) if key_lines else np.zeros(0, dtype="int64")
    if len(ids) < 2:
        return
    order = np.lexsort((dates, ids))
    same = (ids[order][1:] == ids[order][:-1]) & (dates[order][1:] == dates[order][:-1])
    if not same.any():
        return
    dup_sorted = np.zeros(len(ids), dtype=bool)
    dup_sorted[1:] |= same
    dup_sorted[:-1] |= same
    dup = np.zeros(len(ids), dtype=bool)
    dup[order] = dup_sorted
    where = np.flatnonzero(dup)
    keys = [str(i) for i in ids[where]]
    if report.dated:
        epoch = dt.date(1970, 1, 1)
        keys = [f"{k}@{(epoch + dt.timedelta(days=int(d))).isoformat()}" for k, d in zip(keys, dates[where])]
    table = pa.table({
        "file": pa.array([report.name] * len(where), pa.string()),
        "line": pa.array(lines[where], pa.int64()),
        "key": pa.array(keys, pa.string()),
        "column": pa.array([ID] * len(where), pa.string()),
        "rule": pa.array(["duplicate_key"] * len(where), pa.string()),
        "value": pa.array([str(i) for i in ids[where]], pa.string()),
        "action": pa.array([QUARANTINE] * len(where), pa.string()),
    })
    bad_rows.write(table)
    report.record(table)
    report.bad_rows += len(where)
    report.quarantined_rows += len(where)
    kept = pq.read_table(str(clean_path), schema=schema).filter(pa.array(~dup))
    pq.write_table(kept, str(clean_path))


# --------------------------------------------------------------------------------------------------
# the gate and the public functions
# --------------------------------------------------------------------------------------------------


def gate_failures(files: dict[str, dict], threshold: float) -> list[str]:
    """One line per file whose share of bad rows is above ``threshold`` (and for an empty user base)."""
    failures = []
    for name, info in files.items():
        if info["rows"] and info["bad_rows"] / info["rows"] > threshold:
            rules = ", ".join(f"{rule} {n:,}" for rule, n in info["by_rule"].items())
            example = next(iter(next(iter(info["examples"].values()), [])), None)
            shown = ""
            if example:
                shown = (f"; e.g. line {example['line']}" + (f" column {example['column']}" if example["column"] else "")
                         + f" value {example['value']!r}")
            failures.append(
                f"{name}: {info['bad_rows']:,} of {info['rows']:,} rows break a rule ({info['bad_rows'] / info['rows']:.2%}),"
                f" above KPI_CHURN_MAX_BAD_ROW_SHARE={threshold:.2%}: {rules}{shown}"
            )
    base = files.get(SOURCE_FILES[USER_BASE])
    if base is not None and base["clean_rows"] == 0:
        failures.append(f"{SOURCE_FILES[USER_BASE]}: the user base is empty after validation: there is nobody to train on or score")
    return failures


def validate_sources(data_url: str, settings: Settings | None = None, data_version: str | None = None) -> dict:
    """Validate every row of the five sources under ``data_url``; store the outcome; never raises on bad data.

    Args:
        data_url: folder or URL (``file://``, ``s3://``) of the five CSVs.
        settings: platform settings (storage, ``churn_max_bad_row_share``); default: the process settings.
        data_version: the sources' data version when the caller has computed it already.

    Returns:
        ``success``; ``structure_ok``; ``failures`` (one line per problem: file, share, rules, an example);
        per-file ``files`` (rows, bad_rows, bad_share, quarantined_rows, clean_rows, by_rule, by_column,
        examples, dated, snapshot_dates, seconds); ``rows``, ``bad_rows``, ``rows_per_second``,
        ``threshold``, ``data_version``, ``results_url`` (this summary), ``bad_rows_url``, ``clean_url``.
    """
    from kpi.churn.sources import data_version as compute_version
    from kpi.settings import get_settings
    from kpi.storage import filesystem, join, write_text

    settings = settings or get_settings()
    started = time.perf_counter()
    threshold = settings.churn_max_bad_row_share
    headers, failures = check_structure(data_url, settings)
    summary: dict[str, Any] = {
        "success": False, "structure_ok": not failures, "data_url": data_url, "rules_version": RULES_VERSION,
        "threshold": threshold, "failures": failures, "files": {},
    }
    version = None
    if not failures:
        version = data_version or compute_version(data_url, settings)
        folder = validation_url(settings, version)
        files: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(prefix="kpi-churn-validation-") as tmp:
            tmp_path = Path(tmp)
            (tmp_path / CLEAN_FOLDER).mkdir()
            bad_rows = _BadRows(tmp_path / BAD_ROWS_FILE)
            base_ids = None
            try:
                # the user base first: the other files' referential rule needs its ids
                for source in [USER_BASE, *[s for s in SOURCE_FILES if s != USER_BASE]]:
                    report, ids = _validate_file(data_url, source, headers[source], settings, base_ids, bad_rows,
                                                 tmp_path / CLEAN_FOLDER / clean_name(source))
                    if ids is not None:
                        base_ids = ids
                    checked = [f"{c or '(line)'}: {r}" for c, r in column_rules(source, headers[source])]
                    files[SOURCE_FILES[source]] = {**report.as_dict(), "rules": checked}
                    log.info("validated %s: %d rows, %d bad", SOURCE_FILES[source], report.rows, report.bad_rows)
            except SourceValidationError as exc:
                summary["structure_ok"] = False
                summary["failures"] = exc.failures
            finally:
                bad_rows.close()
            if summary["structure_ok"]:
                fs, path = filesystem(folder, settings)
                fs.makedirs(path, exist_ok=True)
                for local in [*sorted((tmp_path / CLEAN_FOLDER).iterdir()), tmp_path / BAD_ROWS_FILE]:
                    relative = local.relative_to(tmp_path).as_posix()
                    target = f"{path.rstrip('/')}/{relative}"
                    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                    fs.put_file(str(local), target)
                summary["files"] = files
                summary["failures"] = gate_failures(files, threshold)
                summary["bad_rows_url"] = join(folder, BAD_ROWS_FILE)
                summary["clean_url"] = join(folder, CLEAN_FOLDER)
    seconds = time.perf_counter() - started
    rows = sum(f["rows"] for f in summary["files"].values())
    summary.update({
        "success": summary["structure_ok"] and not summary["failures"],
        "data_version": version,
        "rows": rows,
        "bad_rows": sum(f["bad_rows"] for f in summary["files"].values()),
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds) if seconds > 0 else None,
    })
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    summary["validated_at"] = stamp
    if version is not None:
        results_url = join(validation_url(settings, version), SUMMARY_FILE)
    else:
        results_url = join(settings.resolved_storage_url, *VALIDATION_PREFIX, f"invalid-{stamp}-{os.getpid()}.json")
    summary["results_url"] = results_url
    # written last: a summary next to clean files means they are complete
    write_text(results_url, json.dumps(summary, indent=1, default=str), settings)
    return summary


def _stored_summary(settings: Settings, version: str) -> dict | None:
    from kpi.storage import exists, join, read_bytes

    url = join(validation_url(settings, version), SUMMARY_FILE)
    if not exists(url, settings):
        return None
    try:
        summary = json.loads(read_bytes(url, settings))
    except (ValueError, OSError):
        return None
    if summary.get("rules_version") != RULES_VERSION or not summary.get("structure_ok") or not summary.get("clean_url"):
        return None
    return summary


def ensure_valid_sources(data_url: str, settings: Settings | None = None) -> ValidatedSources:
    """The validated sources of ``data_url``: validate once per data version, then reuse the stored outcome.

    The structure is checked on every call (cheap); a stored validation of the same data version and
    rules is reused, and its counts are held against the current ``KPI_CHURN_MAX_BAD_ROW_SHARE``.

    Raises:
        SourceValidationError: on a structural problem, or when a file's share of bad rows is above the
            threshold (or the user base is empty), listing every reason.
    """
    from kpi.churn.sources import data_version as compute_version
    from kpi.settings import get_settings

    settings = settings or get_settings()
    _, failures = check_structure(data_url, settings)
    if failures:
        summary = validate_sources(data_url, settings)  # records the failed attempt
        raise SourceValidationError(summary["failures"], summary.get("results_url"), kind="structure")
    version = compute_version(data_url, settings)
    summary = _stored_summary(settings, version)
    if summary is None:
        summary = validate_sources(data_url, settings, data_version=version)
        if not summary["structure_ok"]:
            raise SourceValidationError(summary["failures"], summary.get("results_url"), kind="structure")
    else:
        log.info("reusing the validation of data version %s (%s)", version[:12], summary["results_url"])
        summary = {**summary, "threshold": settings.churn_max_bad_row_share,
                   "failures": gate_failures(summary["files"], settings.churn_max_bad_row_share), "reused": True}
        summary["success"] = not summary["failures"]
    if summary["failures"]:
        raise SourceValidationError(summary["failures"], summary.get("results_url"), kind="bad_rows")
    return ValidatedSources(data_url=data_url, data_version=version, summary=summary)


def assert_valid_sources(data_url: str, settings: Settings | None = None) -> dict:
    """Validate like :func:`ensure_valid_sources` and return the summary (raises :class:`SourceValidationError`)."""
    return ensure_valid_sources(data_url, settings).summary


def quality_report(summary: dict) -> dict:
    """The short form of a validation for a command's JSON: rows, bad rows per file and rule, where they are."""
    return {
        "rows": summary.get("rows"),
        "bad_rows": summary.get("bad_rows"),
        "bad_rows_by_file": {
            name: {"bad_rows": f["bad_rows"], "quarantined_rows": f["quarantined_rows"], "by_rule": f["by_rule"]}
            for name, f in summary.get("files", {}).items() if f["bad_rows"]
        },
        "bad_rows_url": summary.get("bad_rows_url"),
        "validation_url": summary.get("results_url"),
    }


def log_to_active_run(validated: ValidatedSources, settings: Settings | None = None) -> None:
    """Log the validation to the active MLflow run: counts per file and rule, the bad rows and the summary."""
    import mlflow

    from kpi.storage import filesystem

    summary = validated.summary
    metrics = {"source_rows": float(summary["rows"]), "source_bad_rows": float(summary["bad_rows"])}
    for name, info in summary["files"].items():
        stem = name.rsplit(".", 1)[0]
        metrics[f"bad_rows.{stem}"] = float(info["bad_rows"])
        metrics[f"bad_share.{stem}"] = float(info["bad_share"])
        for rule, count in info["by_rule"].items():
            metrics[f"bad_rows.{stem}.{rule}"] = float(count)
    mlflow.log_metrics(metrics)
    mlflow.set_tags({"source_validation_url": summary["results_url"], "bad_rows_url": summary.get("bad_rows_url", "")})
    with tempfile.TemporaryDirectory() as tmp:
        fs, path = filesystem(summary["bad_rows_url"], settings)
        local = Path(tmp) / BAD_ROWS_FILE
        fs.get_file(path, str(local))
        mlflow.log_artifact(str(local), artifact_path="source-validation")
        (Path(tmp) / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str))
        mlflow.log_artifact(str(Path(tmp) / SUMMARY_FILE), artifact_path="source-validation")


def local_clean_folder(validated: ValidatedSources, settings: Settings | None = None) -> Path:
    """A local folder with the clean Parquet files (downloaded when storage is remote; local Spark has no S3A)."""
    from kpi.churn.sources import is_remote, local_path

    if not is_remote(validated.clean_url):
        return local_path(validated.clean_url)
    import atexit

    from kpi.storage import filesystem

    target = Path(tempfile.mkdtemp(prefix="kpi-churn-clean-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    for source in SOURCE_FILES:
        fs, path = filesystem(validated.clean_file(source), settings)
        fs.get_file(path, str(target / clean_name(source)))
    return target
