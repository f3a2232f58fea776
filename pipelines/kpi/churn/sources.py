"""The churn source files: names, columns, time semantics, fingerprints and local copies.

Five CSVs in the shapes of the original assignment. ``PAYMENTS`` is an event log (``FECHA`` per row);
the other four are *snapshot tables*. Three of them (``ACTIVE_USER``, ``DINERO_CUENTA``,
``MARKETPLACE_DATA``) hold lagged, time-varying columns and may carry an extra ``SNAPSHOT_DATE``
column: one row per user per snapshot, taken at 00:00 of that date, so a snapshot dated ``s`` only
describes activity strictly before ``s``. ``DEMOGRAFICOS`` holds static attributes, one row per user,
and is the user base every other file refers to. See ``docs/churn-data.md``.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path

from kpi.settings import Settings

ID = "CUS_CUST_ID_BUY"
SNAPSHOT_DATE = "SNAPSHOT_DATE"

SOURCE_FILES = {
    "payments": "PAYMENTS.csv",
    "active_user": "ACTIVE_USER.csv",
    "demograficos": "DEMOGRAFICOS.csv",
    "dinero_cuenta": "DINERO_CUENTA.csv",
    "marketplace": "MARKETPLACE_DATA.csv",
}
OUTCOMES_FILE = "OUTCOMES.csv"
OUTCOME_COLUMNS = [ID, "p_true", "active_next_60d"]

# The original columns of each file, in order (SNAPSHOT_DATE, when present, comes last).
SOURCE_COLUMNS: dict[str, list[str]] = {
    "payments": ["FECHA", "CUS_CUST_ID_SEL", ID, "SPENT", "TPV_SEGMENT_DETAIL", "DESCUENTO"],
    "active_user": [ID, "MAU_MP_1", "MAU_ML_1", "MAU_ML_2", "last_login_mp_date_1"],
    "demograficos": [ID, "AGE", "GENDER", "CARD_TYPE", "CITY"],
    "dinero_cuenta": [ID, "PLATA_CUENTA_1", "PLATA_CUENTA_2", "INVERSION"],
    "marketplace": [ID, "SPENT_ML", "RECENCY_ML", "FREQUENCY_ML"],
}

# Logical type of every column: "id", "int", "float", "date", "string".
COLUMN_TYPES: dict[str, dict[str, str]] = {
    "payments": {
        "FECHA": "date",
        "CUS_CUST_ID_SEL": "string",
        ID: "id",
        "SPENT": "float",
        "TPV_SEGMENT_DETAIL": "string",
        "DESCUENTO": "float",
    },
    "active_user": {
        ID: "id",
        "MAU_MP_1": "int",
        "MAU_ML_1": "int",
        "MAU_ML_2": "int",
        "last_login_mp_date_1": "date",
        SNAPSHOT_DATE: "date",
    },
    "demograficos": {ID: "id", "AGE": "int", "GENDER": "string", "CARD_TYPE": "string", "CITY": "string"},
    "dinero_cuenta": {
        ID: "id",
        "PLATA_CUENTA_1": "float",
        "PLATA_CUENTA_2": "float",
        "INVERSION": "string",
        SNAPSHOT_DATE: "date",
    },
    "marketplace": {
        ID: "id",
        "SPENT_ML": "float",
        "RECENCY_ML": "date",
        "FREQUENCY_ML": "int",
        SNAPSHOT_DATE: "date",
    },
}

# Files whose non-id columns change over time: usable for a cutoff only through dated snapshots.
SNAPSHOT_SOURCES = ("active_user", "dinero_cuenta", "marketplace")
# The file that defines the user base (one row per user, static attributes).
USER_BASE = "demograficos"


def source_url(data_url: str, source: str) -> str:
    """URL of one source file (``source`` is a key of :data:`SOURCE_FILES` or a file name)."""
    from kpi.storage import join

    name = SOURCE_FILES.get(source, source)
    return join(data_url, name)


def fingerprints(data_url: str, settings: Settings | None = None) -> dict[str, str]:
    """Content hash (sha256) of each of the five source files, keyed by file name.

    Raises:
        FileNotFoundError: when a source file is missing, naming it.
    """
    from kpi.storage import content_fingerprint, exists

    out: dict[str, str] = {}
    for name in SOURCE_FILES.values():
        url = source_url(data_url, name)
        if not exists(url, settings):
            raise FileNotFoundError(f"churn source {name} is missing under {data_url}")
        out[name] = content_fingerprint(url, settings)
    return out


def data_version(data_url: str, settings: Settings | None = None) -> str:
    """The data version tag: sha256 over the five files' names and content fingerprints."""
    digest = hashlib.sha256()
    for name, fp in sorted(fingerprints(data_url, settings).items()):
        digest.update(f"{name}:{fp}\n".encode())
    return digest.hexdigest()


# Above this much source data, features are built with Spark instead of pandas (drift, daily scoring).
PANDAS_MAX_SOURCE_BYTES = 256 * 1024 * 1024


def total_bytes(data_url: str, settings: Settings | None = None) -> int:
    """Size of the five source files together (a missing one counts 0)."""
    from kpi import storage

    fs, path = storage.filesystem(data_url, settings)
    total = 0
    for name in SOURCE_FILES.values():
        target = f"{path.rstrip('/')}/{name}"
        if fs.exists(target):
            total += int(fs.size(target) or 0)
    return total


def feature_engine(settings: Settings, data_url: str, engine: str = "auto") -> str:
    """``pandas`` or ``spark`` for building features of ``data_url``: ``auto`` picks pandas up to
    :data:`PANDAS_MAX_SOURCE_BYTES` of sources (no JVM for small data), Spark above.

    Raises:
        ValueError: ``engine`` is none of auto, pandas, spark.
    """
    if engine == "auto":
        return "pandas" if total_bytes(data_url, settings) <= PANDAS_MAX_SOURCE_BYTES else "spark"
    if engine not in ("pandas", "spark"):
        raise ValueError(f"unknown feature engine {engine!r}: use auto, pandas or spark")
    return engine


def is_remote(data_url: str) -> bool:
    """True for URLs that need fsspec (s3:// and friends), False for local paths and file://."""
    return "://" in str(data_url) and not str(data_url).startswith("file://")


def local_path(data_url: str) -> Path:
    """The local folder of a local path or file:// URL."""
    text = str(data_url)
    return Path(text.removeprefix("file://"))


def localize(data_url: str, settings: Settings | None = None, dest: Path | None = None) -> Path:
    """A local folder holding the five source files (and OUTCOMES.csv when present).

    Local paths and file:// URLs are returned as they are; remote folders are downloaded into ``dest``
    (a new temporary folder by default, removed when the process exits: Spark reads it lazily, so it must
    outlive this call), because local Spark has no S3A jars.
    """
    if not is_remote(data_url):
        return local_path(data_url)
    from kpi.storage import exists, filesystem

    if dest:
        target = Path(dest)
    else:
        target = Path(tempfile.mkdtemp(prefix="kpi-churn-sources-"))
        atexit.register(shutil.rmtree, target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    for name in [*SOURCE_FILES.values(), OUTCOMES_FILE]:
        url = source_url(data_url, name)
        if not exists(url, settings):
            if name == OUTCOMES_FILE:
                continue
            raise FileNotFoundError(f"churn source {name} is missing under {data_url}")
        fs, path = filesystem(url, settings)
        fs.get(path, str(target / name))
    return target


def read_header(data_url: str, source: str, settings: Settings | None = None) -> list[str]:
    """The column names on the first line of one source file."""
    from kpi.storage import filesystem

    url = source_url(data_url, source)
    fs, path = filesystem(url, settings)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"churn source {SOURCE_FILES.get(source, source)} is missing under {data_url}"
        )
    with fs.open(path, "rb") as fh:
        first = fh.readline().decode("utf-8-sig").strip()
    return [c.strip().strip('"') for c in first.split(",")] if first else []


def check_columns(source: str, header: list[str]) -> bool:
    """Check a header against the expected shape; return True when it carries ``SNAPSHOT_DATE``.

    Raises:
        ValueError: naming the file and the missing or unexpected columns.
    """
    expected = SOURCE_COLUMNS[source]
    name = SOURCE_FILES[source]
    missing = [c for c in expected if c not in header]
    allowed = set(expected) | ({SNAPSHOT_DATE} if source in SNAPSHOT_SOURCES else set())
    extra = [c for c in header if c not in allowed]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        raise ValueError(f"{name}: {'; '.join(parts)} (expected {expected})")
    return SNAPSHOT_DATE in header
