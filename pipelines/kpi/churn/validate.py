"""Validate the five churn sources with Great Expectations before anything is trained.

Each file is read with every value as text, so a malformed number or date is a reported failure, not a
crash. One rule table (:func:`source_rules`) feeds the suites: the column set, types (regexes on the
text), required values, id uniqueness (per snapshot date for dated snapshot tables), value ranges and
sets, the point-in-time rule of snapshots (dates inside a snapshot come before its ``SNAPSHOT_DATE``),
and referential integrity (every id of another file exists in the user base, DEMOGRAFICOS.csv).
Every failure names file, column and rule. The GE results go to
``<KPI_STORAGE_URL>/churn/source-validation/<data_version>.json``.

Files above ``max_rows`` rows are checked on a systematic sample of every k-th row (the summary says
so); the user base is always read whole because the referential checks need every id.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from kpi.churn.sources import (
    COLUMN_TYPES,
    ID,
    SNAPSHOT_DATE,
    SNAPSHOT_SOURCES,
    SOURCE_FILES,
    USER_BASE,
    read_header,
    source_url,
)
from kpi.settings import Settings

DEFAULT_MAX_ROWS = 2_000_000
IN_USER_BASE = "_id_in_user_base"  # derived column: the referential check as a per-row fact

TYPE_PATTERNS = {
    "id": r"^\d{1,18}$",
    "int": r"^-?\d+$",
    "float": r"^-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$",
    "date": r"^\d{4}-\d{2}-\d{2}$",
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
VALUE_SETS = {
    "demograficos": {"GENDER": ["F", "M", "X"], "CARD_TYPE": ["CLASSIC", "GOLD", "PLATINUM", "BLACK"]},
    "dinero_cuenta": {"INVERSION": ["Investing", "Eligible", "Pending", "Warmup"]},
}
# (file, column that must be strictly before SNAPSHOT_DATE): a snapshot only describes its past
BEFORE_SNAPSHOT = {"active_user": "last_login_mp_date_1", "marketplace": "RECENCY_ML"}
DATE_RANGE = (dt.datetime(2000, 1, 1), dt.datetime(2100, 1, 1))


def typed_name(column: str) -> str:
    """Name of the parsed twin of a text column (range and date-order rules run on it)."""
    return f"{column}__typed"


class SourceValidationError(Exception):
    """The churn sources failed validation; the message lists every reason (file, column, rule)."""

    def __init__(self, failures: list[str], results_url: str | None = None):
        self.failures = failures
        self.results_url = results_url
        lines = "\n  - ".join(failures)
        where = f" (results: {results_url})" if results_url else ""
        super().__init__(f"churn sources failed validation{where}:\n  - {lines}")


@dataclass
class Rule:
    """One expectation with the words of its failure message."""

    column: str | None
    rule: str
    expectation: Any = field(repr=False)


def source_rules(source: str, columns: list[str]) -> list[Rule]:
    """The rule table of one file, for the columns its header has (SNAPSHOT_DATE included when present)."""
    import great_expectations as gx

    E = gx.expectations
    types = COLUMN_TYPES[source]
    dated = SNAPSHOT_DATE in columns
    rules = [
        # the header was checked already (unexpected columns included); parsed twins are added beside
        Rule(
            None,
            f"columns must include {columns}",
            E.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=False),
        ),
        Rule(None, "file must not be empty", E.ExpectTableRowCountToBeBetween(min_value=1)),
    ]
    for col in [*REQUIRED[source], *([SNAPSHOT_DATE] if dated else [])]:
        rules.append(Rule(col, "must not be empty", E.ExpectColumnValuesToNotBeNull(column=col)))
    for col in columns:
        kind = types[col]
        if kind in TYPE_PATTERNS:
            label = {
                "id": "an integer id",
                "int": "an integer",
                "float": "a number",
                "date": "a date YYYY-MM-DD",
            }[kind]
            rules.append(
                Rule(
                    col,
                    f"must be {label}",
                    E.ExpectColumnValuesToMatchRegex(column=col, regex=TYPE_PATTERNS[kind]),
                )
            )
    for col, (lo, hi) in RANGES.get(source, {}).items():
        rules.append(
            Rule(
                col,
                f"must be between {lo} and {hi}",
                E.ExpectColumnValuesToBeBetween(column=typed_name(col), min_value=lo, max_value=hi),
            )
        )
    for col in columns:
        if types[col] == "date":
            rules.append(
                Rule(
                    col,
                    f"must be a date between {DATE_RANGE[0]:%Y-%m-%d} and {DATE_RANGE[1]:%Y-%m-%d}",
                    E.ExpectColumnValuesToBeBetween(
                        column=typed_name(col), min_value=DATE_RANGE[0], max_value=DATE_RANGE[1]
                    ),
                )
            )
    for col, allowed in VALUE_SETS.get(source, {}).items():
        rules.append(
            Rule(
                col, f"must be one of {allowed}", E.ExpectColumnValuesToBeInSet(column=col, value_set=allowed)
            )
        )
    if source == USER_BASE or (source in SNAPSHOT_SOURCES and not dated):
        rules.append(Rule(ID, "ids must be unique", E.ExpectColumnValuesToBeUnique(column=ID)))
    elif dated:
        rules.append(
            Rule(
                ID,
                f"({ID}, {SNAPSHOT_DATE}) must be unique",
                E.ExpectCompoundColumnsToBeUnique(column_list=[ID, SNAPSHOT_DATE]),
            )
        )
    if dated and source in BEFORE_SNAPSHOT:
        col = BEFORE_SNAPSHOT[source]
        rules.append(
            Rule(
                col,
                f"must be before {SNAPSHOT_DATE} (a snapshot describes only its past)",
                E.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A=typed_name(SNAPSHOT_DATE),
                    column_B=typed_name(col),
                    or_equal=False,
                    ignore_row_if="either_value_is_missing",
                ),
            )
        )
    if source != USER_BASE:
        rules.append(
            Rule(
                ID,
                f"ids must exist in the user base {SOURCE_FILES[USER_BASE]}",
                E.ExpectColumnValuesToBeInSet(column=IN_USER_BASE, value_set=[True]),
            )
        )
    for r in rules:
        r.expectation.meta = {"file": SOURCE_FILES[source], "column": r.column, "rule": r.rule}
    return rules


def _read_text(
    data_url: str, source: str, header: list[str], max_rows: int, settings
) -> tuple[Any, int, int]:
    """The file as a pandas frame of text (None for empty values); a systematic sample above max_rows.

    Returns:
        (frame, rows in the file, sampling step).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from kpi.storage import filesystem

    fs, path = filesystem(source_url(data_url, source), settings)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in header},
        strings_can_be_null=True,
        null_values=[""],
        quoted_strings_can_be_null=True,
    )
    read = pacsv.ReadOptions(block_size=1 << 22)
    size = fs.size(path)
    with fs.open(path, "rb") as fh:
        head = fh.read(1 << 20)
    lines = max(1, head.count(b"\n"))
    estimated = int(size / (len(head) / lines)) if head else 0
    step = 1 if source == USER_BASE or estimated <= max_rows else math.ceil(estimated / max_rows)
    batches, rows = [], 0
    with fs.open(path, "rb") as fh:
        reader = pacsv.open_csv(fh, read_options=read, convert_options=convert)
        for batch in reader:
            if step > 1:
                first = (-rows) % step
                batch_rows = batch.num_rows
                batches.append(batch.take(pa.array(range(first, batch_rows, step))))
                rows += batch_rows
            else:
                batches.append(batch)
                rows += batch.num_rows
        schema = reader.schema
    table = pa.Table.from_batches(batches, schema=schema)
    return table.to_pandas(), rows, step


def _typed_copy(frame, source: str):
    """Numbers and dates parsed for range checks (unparsable values become null: the type rule reports them)."""
    import pandas as pd

    typed = frame.copy()
    for col, kind in COLUMN_TYPES[source].items():
        if col not in typed.columns:
            continue
        if kind in ("id", "int", "float"):
            typed[col] = pd.to_numeric(typed[col], errors="coerce")
        elif kind == "date":
            typed[col] = pd.to_datetime(typed[col], format="%Y-%m-%d", errors="coerce")
    return typed


def _message(item) -> str:
    meta = item.expectation_config.meta or {}
    result = item.result or {}
    where = f"{meta.get('file')}: column {meta['column']}" if meta.get("column") else f"{meta.get('file')}"
    detail = ""
    if result.get("unexpected_count"):
        examples = result.get("partial_unexpected_list") or []
        examples = [e for e in examples if e is not None][:3]
        detail = f" ({result['unexpected_count']} rows" + (f", e.g. {examples}" if examples else "") + ")"
    elif result.get("observed_value") is not None:
        detail = f" (observed {result['observed_value']})"
    if item.exception_info and item.exception_info.get("raised_exception"):
        detail += f" [check raised: {item.exception_info.get('exception_message')}]"
    return f"{where}: {meta.get('rule')}{detail}"


def validate_sources(
    data_url: str, settings: Settings | None = None, max_rows: int = DEFAULT_MAX_ROWS
) -> dict:
    """Validate the five sources under ``data_url``; store the GE results; never raises on bad data.

    Returns:
        ``success``, ``failures`` (one line per failed rule: file, column, rule, counts, examples),
        ``results_url``, ``data_version``, per-file ``files`` (rows, sampled step, rules checked) and
        ``seconds``.
    """
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from kpi.churn.sources import check_columns, data_version
    from kpi.settings import get_settings
    from kpi.storage import exists, join, write_text

    settings = settings or get_settings()
    started = time.perf_counter()
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    failures: list[str] = []
    files: dict[str, dict] = {}
    results: dict[str, Any] = {}

    missing = [name for name in SOURCE_FILES.values() if not exists(source_url(data_url, name), settings)]
    if missing:
        failures += [f"{name}: file is missing under {data_url}" for name in missing]
        version = None
    else:
        version = data_version(data_url, settings)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    datasource = context.data_sources.add_pandas("churn_sources")
    user_ids = None
    # the user base first: the other files' referential rule needs its ids
    for source in [USER_BASE, *[s for s in SOURCE_FILES if s != USER_BASE]]:
        name = SOURCE_FILES[source]
        if name in missing:
            continue
        header = read_header(data_url, source, settings)
        try:
            check_columns(source, header)
        except ValueError as exc:
            failures.append(str(exc))
            if source == USER_BASE:
                user_ids = None
            continue
        file_started = time.perf_counter()
        frame, rows, step = _read_text(data_url, source, header, max_rows, settings)
        if source == USER_BASE:
            user_ids = pd.to_numeric(frame[ID], errors="coerce").dropna().astype("int64").unique()
        checked = frame.copy()
        typed = _typed_copy(frame, source)
        for col, kind in COLUMN_TYPES[source].items():
            if col in header and kind != "string":
                checked[typed_name(col)] = typed[col]
        rules = source_rules(source, header)
        if source != USER_BASE:
            if user_ids is None:
                # the user base itself is broken (reported there): the referential rule cannot run
                rules = [r for r in rules if getattr(r.expectation, "column", None) != IN_USER_BASE]
            else:
                ids = typed[ID]
                checked[IN_USER_BASE] = ids.isin(user_ids) | ids.isna()
        suite = context.suites.add(
            gx.ExpectationSuite(name=f"churn_{source}", expectations=[r.expectation for r in rules])
        )
        asset = datasource.add_dataframe_asset(name=source)
        batch = asset.add_batch_definition_whole_dataframe(f"{source}_all")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"churn_{source}", data=batch, suite=suite)
        )
        outcome = definition.run(
            batch_parameters={"dataframe": checked},
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        )
        file_failures = [_message(item) for item in outcome.results if not item.success]
        failures += file_failures
        files[name] = {
            "rows": rows,
            "sample_step": step,
            "rules": len(rules),
            "failed_rules": len(file_failures),
            "seconds": round(time.perf_counter() - file_started, 2),
        }
        results[name] = outcome.to_json_dict()

    success = not failures
    summary = {
        "success": success,
        "data_url": data_url,
        "data_version": version,
        "failures": failures,
        "files": files,
        "seconds": round(time.perf_counter() - started, 2),
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    key = version or f"invalid-{stamp}"
    results_url = join(settings.resolved_storage_url, "churn", "source-validation", f"{key}.json")
    write_text(
        results_url,
        json.dumps({**summary, "validated_at": stamp, "results": results}, indent=1, default=str),
        settings,
    )
    summary["results_url"] = results_url
    return summary


def assert_valid_sources(
    data_url: str, settings: Settings | None = None, max_rows: int = DEFAULT_MAX_ROWS
) -> dict:
    """Validate like :func:`validate_sources` and raise :class:`SourceValidationError` on any failure."""
    summary = validate_sources(data_url, settings, max_rows=max_rows)
    if not summary["success"]:
        raise SourceValidationError(summary["failures"], summary.get("results_url"))
    return summary
