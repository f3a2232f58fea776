"""The champion's input, field by field: typed fields from ``ChurnModel.input_schema()`` and the checks that
name the offending field.

One set of checks for every way a person or a service hands features to the model: the dashboard's form
(:func:`form_frame`, strict: a value is required and must lie in the training range) and the scoring API
(:func:`records_frame`, many users at once: ``null`` means unknown, as in the pipeline, and values outside
the training range are scored). Both refuse what the model cannot read (text in a numeric field, a
non-finite number, a fraction for a whole-number field, an unknown category) with a message that starts
with the field's name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

INT_TYPES = {"int", "integer", "long", "int32", "int64", "bigint"}
FLOAT_TYPES = {"float", "double", "number", "numeric", "float32", "float64", "decimal"}
CATEGORY_TYPES = {"category", "categorical", "string", "str", "object"}
# up to this many rows a numeric column is checked value by value: a dozen numpy calls per column cost more
# than the Python checks for the one-user requests of the scoring API
VALUE_BY_VALUE_MAX_ROWS = 8


class InvalidInput(ValueError):
    """Input that cannot be scored; ``problems`` holds one human-readable message per field.

    ``locations`` (same length as ``problems`` when given) says where each problem is: ``(row, field)``,
    ``row`` None for a one-row input.
    """

    def __init__(self, problems: list[str], locations: list[tuple[int | None, str]] | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.locations = locations or []


@dataclass(frozen=True)
class FormField:
    """One input of the model (a field of the scoring form), derived from the champion's input schema."""

    name: str
    kind: str  # "int" | "float" | "category"
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = field(default_factory=tuple)
    default: Any = None

    @property
    def range_text(self) -> str:
        """The accepted values, for help texts and messages."""
        if self.kind == "category":
            return "one of " + ", ".join(self.categories) if self.categories else "any text"
        if self.minimum is None and self.maximum is None:
            return "any number"
        return f"between {_fmt(self.minimum, '-inf')} and {_fmt(self.maximum, '+inf')}"


def _fmt(value: float | None, missing: str) -> str:
    if value is None:
        return missing
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind(spec: Mapping[str, Any]) -> str:
    declared = str(spec.get("type", "")).lower()
    if spec.get("categories") is not None or declared in CATEGORY_TYPES:
        return "category"
    if declared in INT_TYPES:
        return "int"
    if declared in FLOAT_TYPES or not declared:
        return "float"
    raise ValueError(f"unsupported input type {declared!r} in the model's input schema")


def form_fields(schema: Mapping[str, Mapping[str, Any]]) -> list[FormField]:
    """Form fields in schema order from ``ChurnModel.input_schema()``.

    Args:
        schema: feature name -> ``{type, min, max, categories}`` (optionally ``default``/``median``).

    Returns:
        One :class:`FormField` per feature; the default is the schema's default or median when given,
        else the middle of the training range (the first category for categorical fields).
    """
    fields = []
    for name, spec in schema.items():
        kind = _kind(spec)
        if kind == "category":
            cats = tuple(str(c) for c in (spec.get("categories") or []))
            default = spec.get("default", cats[0] if cats else "")
            fields.append(FormField(name, kind, categories=cats, default=default))
            continue
        lo = spec.get("min")
        hi = spec.get("max")
        lo = None if lo is None or is_missing(lo) else float(lo)
        hi = None if hi is None or is_missing(hi) else float(hi)
        default = spec.get("default", spec.get("median"))
        if default is None or is_missing(default):
            default = (lo + hi) / 2 if lo is not None and hi is not None else (lo or hi or 0.0)
        if kind == "int":
            lo = None if lo is None else math.floor(lo)
            hi = None if hi is None else math.ceil(hi)
            default = round(float(default))
        else:
            # four decimals read better in a form; clamping keeps the rounded default inside the range
            default = round(float(default), 4)
            default = min(max(default, lo if lo is not None else default), hi if hi is not None else default)
        fields.append(FormField(name, kind, lo, hi, default=default))
    return fields


def is_missing(value: Any) -> bool:
    """True for None and NaN (what the model treats as an unknown value)."""
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def check_value(spec: FormField, value: Any) -> tuple[Any, str | None]:
    """Parse one value for ``spec``; return ``(parsed, problem)`` where problem names the field."""
    if spec.kind == "category":
        if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
            return None, None  # unknown category: the model encodes null as "unknown"
        text = str(value).strip()
        if spec.categories and text not in spec.categories:
            return None, f"{spec.name}: {text!r} is not a known value ({spec.range_text})"
        return text, None
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None, f"{spec.name}: a value is required ({spec.range_text})"
    if isinstance(value, bool):  # JSON true/false would otherwise pass as 1/0
        return None, f"{spec.name}: {value!r} is not a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"{spec.name}: {value!r} is not a number"
    if not math.isfinite(number):
        return None, f"{spec.name}: {value!r} is not a finite number"
    if spec.kind == "int" and number != int(number):
        return None, f"{spec.name}: {value!r} is not a whole number"
    if spec.minimum is not None and number < spec.minimum:
        return None, f"{spec.name}: {value!r} is below the training range ({spec.range_text})"
    if spec.maximum is not None and number > spec.maximum:
        return None, f"{spec.name}: {value!r} is above the training range ({spec.range_text})"
    return (int(number) if spec.kind == "int" else number), None


def form_frame(fields: list[FormField], values: Mapping[str, Any]) -> pd.DataFrame:
    """One-row model input from form values, checked field by field.

    Raises:
        InvalidInput: with one message per bad field (each starts with the field's name).
    """
    row: dict[str, Any] = {}
    problems = []
    for spec in fields:
        if spec.name not in values:
            problems.append(f"{spec.name}: missing")
            continue
        parsed, problem = check_value(spec, values[spec.name])
        if problem:
            problems.append(problem)
        row[spec.name] = parsed
    if problems:
        raise InvalidInput(problems)
    return _typed_frame(fields, [row])


def _typed_frame(fields: list[FormField], rows: list[dict[str, Any]]) -> pd.DataFrame:
    # one numpy array per column: far cheaper than per-column astype on the single-prediction path
    data = {}
    for spec in fields:
        values = [r.get(spec.name) for r in rows]
        if spec.kind == "category":
            data[spec.name] = np.array(values, dtype=object)
        else:
            data[spec.name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.DataFrame(data, columns=[f.name for f in fields])


def score_one(model, row: pd.DataFrame) -> float:
    """Probability of at least one payment in the next 60 days for a one-row input."""
    return float(np.asarray(model.predict_proba(row)).reshape(-1)[0])


def records_frame(fields: list[FormField], records: Sequence[Mapping[str, Any]], *,
                  where: Callable[[int], str] = lambda i: f"[{i}]", check_ranges: bool = False,
                  max_problems: int = 50) -> pd.DataFrame:
    """Model input from many records of feature values (one mapping per user), checked column by column.

    The checks of :func:`records_columns`, then :func:`columns_frame`.

    Raises:
        InvalidInput: see :func:`records_columns`.
    """
    columns = records_columns(fields, records, where=where, check_ranges=check_ranges, max_problems=max_problems)
    return columns_frame(fields, columns)


def columns_frame(fields: list[FormField], columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The model's input frame from checked columns: float64 numerics and object categoricals, in ``fields``
    order, built as two blocks (a frame of one block per column costs twice as much on the scoring path)."""
    numeric = [f.name for f in fields if f.kind != "category"]
    categorical = [f.name for f in fields if f.kind == "category"]
    rows = len(next(iter(columns.values()))) if columns else 0
    parts = []
    if numeric:
        block = np.column_stack([columns[n] for n in numeric]).astype(np.float64, copy=False)
        parts.append(pd.DataFrame(block.reshape(rows, len(numeric)), columns=numeric, copy=False))
    if categorical:
        block = np.empty((rows, len(categorical)), dtype=object)
        for j, name in enumerate(categorical):
            block[:, j] = columns[name]
        parts.append(pd.DataFrame(block, columns=categorical, copy=False))
    frame = pd.concat(parts, axis=1, copy=False) if len(parts) > 1 else parts[0]
    order = [f.name for f in fields]
    return frame if list(frame.columns) == order else frame[order]


def records_columns(fields: list[FormField], records: Sequence[Mapping[str, Any]], *,
                    where: Callable[[int], str] = lambda i: f"[{i}]", check_ranges: bool = False,
                    max_problems: int = 50) -> dict[str, np.ndarray]:
    """Many records of feature values (one mapping per user) checked column by column, as typed columns.

    Every record must carry exactly the model's features: a missing key or an unknown one (a typo) is
    refused. ``None`` (JSON ``null``) means unknown: the model imputes a numeric value with the training
    median and puts a categorical one in its "unknown" slot, as the pipeline does for blanks. Values
    outside the training range are scored (a service sends real data, not a person typing) unless
    ``check_ranges``.

    Args:
        fields: the model's fields (:func:`form_fields` of its input schema).
        records: feature name -> value, one mapping per row.
        where: how a message names row ``i`` (e.g. ``users[3].features``).
        check_ranges: refuse numbers outside the training range, as the form does.
        max_problems: stop collecting after this many problems (a whole batch of bad rows stays readable).

    Returns:
        Feature name -> column (float64 for numerics, NaN for unknown; object for categoricals, None for
        unknown), in ``fields`` order.

    Raises:
        InvalidInput: one message per bad value, each starting with ``where(row)`` and the field's name;
            ``locations`` holds ``(row, field)`` of each.
    """
    problems: list[str] = []
    locations: list[tuple[int | None, str]] = []

    def refuse(row: int, name: str, message: str) -> None:
        if len(problems) < max_problems:
            problems.append(f"{where(row)}.{message}")
            locations.append((row, name))

    known = {f.name for f in fields}
    for i, record in enumerate(records):
        if len(record) != len(known) or not known.issuperset(record):
            for name in sorted(set(record) - known):
                refuse(i, name, f"{name}: not a feature of this model (GET /model lists them)")
            for name in (f.name for f in fields if f.name not in record):
                refuse(i, name, f"{name}: missing (send null for an unknown value)")
    data: dict[str, np.ndarray] = {}
    for spec in fields:
        column = [record.get(spec.name) for record in records]
        if spec.kind == "category":
            parsed = np.empty(len(column), dtype=object)
            for i, value in enumerate(column):
                parsed[i], problem = check_value(spec, value)
                if problem:
                    refuse(i, spec.name, problem)
            data[spec.name] = parsed
        else:
            data[spec.name] = _numeric_column(spec if check_ranges else _unranged(spec.name, spec.kind),
                                              column, refuse)
    if problems:
        raise InvalidInput(problems, locations)
    return data


@functools.lru_cache(maxsize=1024)
def _unranged(name: str, kind: str) -> FormField:
    """The field without its training range (the API scores values outside it); one per (name, kind)."""
    return FormField(name, kind)


def _numeric_column(spec: FormField, column: list[Any], refuse: Callable[[int, str, str], None]) -> np.ndarray:
    """A float column; ``None`` -> NaN (imputed by the model); each bad value reported through ``refuse``."""
    # JSON numbers of many rows: checked as one array (a few rows are cheaper value by value, below)
    if len(column) > VALUE_BY_VALUE_MAX_ROWS and all(type(v) in (int, float) or v is None for v in column):
        values = np.array([np.nan if v is None else v for v in column], dtype=np.float64)
        given = np.array([v is not None for v in column])
        bad = given & ~np.isfinite(values)
        if spec.kind == "int":
            bad |= given & np.isfinite(values) & (values != np.floor(np.where(np.isfinite(values), values, 0)))
        if spec.minimum is not None:
            bad |= given & (values < spec.minimum)
        if spec.maximum is not None:
            bad |= given & (values > spec.maximum)
        if not bad.any():
            return values
    values = [math.nan] * len(column)
    for i, value in enumerate(column):  # value by value: names each bad value
        if value is None:
            continue
        parsed, problem = check_value(spec, value)
        if problem:
            refuse(i, spec.name, problem)
        else:
            values[i] = parsed
    return np.array(values, dtype=np.float64)
