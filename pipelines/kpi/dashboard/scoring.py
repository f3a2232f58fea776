"""Interactive scoring with the champion: form fields from the model's input schema, input checks that
name the offending field, and batch scoring that sets bad rows aside with their reason.

The model is the JVM-free ``ChurnModel`` (``feature_names``, ``predict_proba(df)``, ``input_schema()``);
the functions here only prepare its input and never change how it scores. The input schema and the
field checks live in :mod:`kpi.churn.inputs` (the scoring API checks its requests with them too) and
are re-exported here.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from kpi.churn.inputs import (  # noqa: F401 - re-exported: the pages, tests and benchmarks import them here
    FormField,
    InvalidInput,
    check_value,
    form_fields,
    form_frame,
    is_missing,
    score_one,
)

ID = "CUS_CUST_ID_BUY"
PROBABILITY = "p_active_60d"


# --------------------------------------------------------------------------------------------------------
# Batch scoring
# --------------------------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """Outcome of a batch: scored rows, rows set aside with their reason, and file-level problems."""

    scored: pd.DataFrame
    rejected: pd.DataFrame
    shape: str  # "features" | "sources"
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UploadLimits:
    """What the batch page accepts: bytes per file and data rows per file (both from the settings)."""

    max_mb: int = 50
    max_rows: int = 1_000_000
    chunk_rows: int = 20_000  # rows parsed and scored at a time: bounds memory, not the result

    @property
    def max_bytes(self) -> int:
        return self.max_mb * 1024 * 1024

    @classmethod
    def from_settings(cls, settings) -> UploadLimits:
        """``KPI_DASHBOARD_MAX_UPLOAD_MB`` and ``KPI_DASHBOARD_MAX_UPLOAD_ROWS``."""
        return cls(settings.dashboard_max_upload_mb, settings.dashboard_max_upload_rows)


# An upload is the bytes themselves (tests) or a binary file object (Streamlit's UploadedFile, read in place).
Upload = bytes | BinaryIO


def _source_files() -> dict[str, str]:
    from kpi.churn.sources import SOURCE_FILES

    return SOURCE_FILES


def upload_shape(files: Mapping[str, Upload]) -> str:
    """``"sources"`` when the uploads are the churn source CSVs (by file name), else ``"features"``.

    Raises:
        InvalidInput: several files that are not the source files, or source files missing.
    """
    expected = {v.upper(): v for v in _source_files().values()}
    names = {Path(n).name.upper() for n in files}
    if names & set(expected):
        missing = sorted(expected[n] for n in set(expected) - names)
        extra = sorted(n for n in names - set(expected))
        problems = []
        if missing:
            problems.append("source-shaped upload is missing " + ", ".join(missing))
        if extra:
            problems.append("unexpected files beside the sources: " + ", ".join(extra))
        if problems:
            raise InvalidInput(problems)
        return "sources"
    if len(files) != 1:
        raise InvalidInput([
            "upload either one feature-shaped CSV or the five source CSVs ("
            + ", ".join(_source_files().values()) + f"); got {len(files)} other files"
        ])
    return "features"


def _stream(upload: Upload) -> BinaryIO:
    """A readable binary stream at the start of ``upload`` (no copy of a file object's bytes)."""
    if isinstance(upload, (bytes, bytearray, memoryview)):
        return io.BytesIO(upload)
    upload.seek(0)
    return upload


def _size(upload: Upload) -> int:
    if isinstance(upload, (bytes, bytearray, memoryview)):
        return len(upload)
    size = getattr(upload, "size", None)  # Streamlit's UploadedFile knows it
    if size is None:
        upload.seek(0, io.SEEK_END)
        size = upload.tell()
    return int(size)


def check_upload_limits(files: Mapping[str, Upload], limits: UploadLimits) -> list[str]:
    """One message per file over ``limits.max_mb``; read nothing.

    The server refuses larger uploads too (Streamlit ``server.maxUploadSize``); this check holds wherever
    the files come from.
    """
    problems = []
    for name, upload in files.items():
        size = _size(upload)
        if size > limits.max_bytes:
            problems.append(f"{name} is {size / 1024 / 1024:.1f} MB, over the limit of {limits.max_mb} MB per file"
                            " (KPI_DASHBOARD_MAX_UPLOAD_MB); split it, or score the sources with `kpi churn score`")
    return problems


def _too_many_rows(name: str, limits: UploadLimits) -> InvalidInput:
    return InvalidInput([(f"{name} has more than {limits.max_rows:,} data rows, the limit per file"
                          " (KPI_DASHBOARD_MAX_UPLOAD_ROWS); split it, or score the sources with `kpi churn score`")])


def features_from_sources(files: Mapping[str, Upload], cutoff: date,
                          limits: UploadLimits | None = None) -> pd.DataFrame:
    """Feature rows built from uploaded source CSVs with the pipeline's own pandas feature code.

    Each upload is copied to a temporary folder in 1 MB blocks (no second copy in memory), counting its
    lines against ``limits.max_rows`` on the way.

    Raises:
        InvalidInput: a source file has more data rows than the limit.
    """
    from kpi.churn.features import build_features_pandas, read_sources_pandas

    limits = limits or UploadLimits()
    expected = {v.upper(): v for v in _source_files().values()}
    with tempfile.TemporaryDirectory(prefix="kpi-upload-") as tmp:
        for name, upload in files.items():
            lines = 0
            stream = _stream(upload)
            with open(Path(tmp) / expected[Path(name).name.upper()], "wb") as out:
                for block in iter(lambda: stream.read(1 << 20), b""):  # noqa: B023 - consumed right here
                    lines += block.count(b"\n")
                    if lines - 1 > limits.max_rows:  # minus the header
                        raise _too_many_rows(name, limits)
                    out.write(block)
        sources = read_sources_pandas(tmp)
        return build_features_pandas(sources, cutoff)


def split_feature_rows(fields: list[FormField], frame: pd.DataFrame, first_row: int = 1
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Separate rows the model can score from rows it cannot, with the reason for each.

    A row is set aside when its user id is blank or a numeric feature is text that is not a finite
    number. Blank numerics are kept (the model imputes the training median, as in the pipeline) and so
    are values outside the training range (the form is stricter because a person typed them).

    Args:
        fields: form fields of the model's input schema.
        frame: rows in feature shape.
        first_row: 1-based data line of ``frame``'s first row (chunks of a bigger file).

    Returns:
        ``(valid, rejected)``: ``valid`` has ``ID`` + the feature columns typed for the model;
        ``rejected`` has ``row`` (1-based line of the data), ``ID`` and ``reason``.

    Raises:
        InvalidInput: a feature column or the id column is missing from the file.
    """
    missing = [c for c in [ID, *(f.name for f in fields)] if c not in frame.columns]
    if missing:
        raise InvalidInput(["the CSV lacks column(s) " + ", ".join(missing)
                            + "; expected the feature shape (" + ", ".join([ID] + [f.name for f in fields])
                            + ") or the five source files"])
    # column by column (no dict per row): the same checks as before at a fraction of the memory
    n = len(frame)
    ids = frame[ID].to_numpy(dtype=object)
    reasons: dict[int, list[str]] = {}
    for i, uid in enumerate(ids):
        if uid is None or (isinstance(uid, float) and math.isnan(uid)) or str(uid).strip() == "":
            reasons.setdefault(i, []).append(f"{ID}: missing")
    data: dict[str, np.ndarray] = {}
    for spec in fields:
        column = frame[spec.name].to_numpy(dtype=object)
        if spec.kind == "category":
            data[spec.name] = np.array([None if v is None or is_missing(v) else str(v).strip() or None for v in column],
                                       dtype=object)
            continue
        bare = FormField(spec.name, spec.kind)  # type checks only: a batch keeps out-of-range values
        values = np.full(n, np.nan)
        for i, value in enumerate(column):
            if value is None or is_missing(value) or (isinstance(value, str) and not value.strip()):
                continue  # blank: the model imputes it
            parsed, problem = check_value(bare, value)
            if problem:
                reasons.setdefault(i, []).append(problem)
            else:
                values[i] = parsed
        data[spec.name] = values
    good = np.ones(n, dtype=bool)
    good[list(reasons)] = False
    valid = pd.DataFrame({name: values[good] for name, values in data.items()}, columns=[f.name for f in fields])
    valid.insert(0, ID, ids[good].tolist())
    rejected = [{"row": first_row + i, ID: ids[i], "reason": "; ".join(r)} for i, r in sorted(reasons.items())]
    return valid, pd.DataFrame(rejected, columns=["row", ID, "reason"])


def score_rows(model, valid: pd.DataFrame, feature_names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score checked rows; if the whole batch fails, score row by row so one bad row stops nothing."""
    if valid.empty:
        return pd.DataFrame(columns=[ID, PROBABILITY]), pd.DataFrame(columns=["row", ID, "reason"])
    try:
        probs = np.asarray(model.predict_proba(valid[feature_names])).reshape(-1)
        return pd.DataFrame({ID: valid[ID].to_numpy(), PROBABILITY: probs}), \
            pd.DataFrame(columns=["row", ID, "reason"])
    except Exception:  # noqa: BLE001 - isolate the rows the model refuses, keep the others
        scored, rejected = [], []
        for i in range(len(valid)):
            one = valid.iloc[[i]]
            try:
                scored.append({ID: one[ID].iloc[0], PROBABILITY: score_one(model, one[feature_names])})
            except Exception as exc:  # noqa: BLE001
                rejected.append({"row": None, ID: one[ID].iloc[0], "reason": f"model refused the row: {exc}"})
        return pd.DataFrame(scored, columns=[ID, PROBABILITY]), pd.DataFrame(rejected, columns=["row", ID, "reason"])


def _feature_chunks(name: str, upload: Upload, limits: UploadLimits) -> Iterator[pd.DataFrame]:
    """The rows of a feature-shaped CSV, ``limits.chunk_rows`` at a time, refusing more than ``max_rows``."""
    stream = _stream(upload)
    reader = pd.read_csv(stream, dtype=str, keep_default_na=False, na_values=[""], chunksize=limits.chunk_rows)
    rows = 0
    with reader:
        for chunk in reader:
            rows += len(chunk)
            if rows > limits.max_rows:
                raise _too_many_rows(name, limits)
            yield chunk
    if rows == 0:  # header only: no chunk came, the columns are still checked
        yield pd.read_csv(_stream(upload), dtype=str, nrows=0)


def _slices(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, max(len(frame), 1), size):
        yield frame.iloc[start:start + size]


def score_upload(model, fields: list[FormField], files: Mapping[str, Upload], cutoff: date | None = None,
                 limits: UploadLimits | None = None) -> BatchResult:
    """Score an upload: one feature-shaped CSV, or the five source CSVs (features built as of ``cutoff``).

    Memory stays bounded by the limits: files over ``limits.max_mb`` are refused before anything is read,
    a feature-shaped CSV is parsed, checked and scored ``limits.chunk_rows`` rows at a time (only ids,
    probabilities and reasons are kept), and a file with more than ``limits.max_rows`` data rows is refused.

    Args:
        model: the champion's ``ChurnModel``.
        fields: form fields of the model's input schema (types of the feature columns).
        files: file name -> bytes or a binary file object, as uploaded.
        cutoff: the "as of" date for source-shaped uploads (data strictly before it is used).
        limits: size and row limits; default :class:`UploadLimits` ().

    Returns:
        A :class:`BatchResult`; file-level problems (too big, wrong shape, missing columns) leave
        ``scored`` empty.
    """
    limits = limits or UploadLimits()
    empty = pd.DataFrame(columns=[ID, PROBABILITY])
    no_rejects = pd.DataFrame(columns=["row", ID, "reason"])
    try:
        shape = upload_shape(files)
    except InvalidInput as exc:
        return BatchResult(empty, no_rejects, "unknown", exc.problems)
    too_big = check_upload_limits(files, limits)
    if too_big:
        return BatchResult(empty, no_rejects, shape, too_big)
    names = [f.name for f in fields]
    scored_parts, rejected_parts = [], []
    first_row = 1
    try:
        if shape == "sources":
            if cutoff is None:
                raise InvalidInput(["source-shaped uploads need an as-of date"])
            chunks = _slices(features_from_sources(files, cutoff, limits), limits.chunk_rows)
        else:
            ((name, upload),) = files.items()
            chunks = _feature_chunks(name, upload, limits)
        for chunk in chunks:
            valid, rejected = split_feature_rows(fields, chunk, first_row)
            first_row += len(chunk)
            scored, refused = score_rows(model, valid, names)
            scored_parts.append(scored)
            rejected_parts += [r for r in (rejected, refused) if len(r)]
    except InvalidInput as exc:
        return BatchResult(empty, no_rejects, shape, exc.problems)
    except (ValueError, KeyError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        return BatchResult(empty, no_rejects, shape, [f"could not read the {shape} upload: {exc}"])
    scored = pd.concat(scored_parts, ignore_index=True) if scored_parts else empty
    rejected = pd.concat(rejected_parts, ignore_index=True) if rejected_parts else no_rejects
    return BatchResult(scored, rejected, shape)
