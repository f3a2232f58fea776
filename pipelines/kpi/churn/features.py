"""Point-in-time features and labels of the churn model, in Spark (any size) and pandas (small inputs).

Time rules (see ``docs/churn-data.md``):

- A feature set at ``cutoff`` uses only information strictly before ``cutoff``: payments with
  ``FECHA < cutoff`` (and within the last :data:`LOOKBACK_DAYS` days, so training and scoring see
  windows of the same length), and for snapshot tables the latest snapshot with
  ``SNAPSHOT_DATE <= cutoff`` (a snapshot taken at 00:00 of its date covers the days before it).
  A snapshot table without ``SNAPSHOT_DATE`` contributes nothing time-varying (nulls): its lagged
  columns describe the moment the file was extracted, which may lie after the cutoff.
- Training at ``as_of`` uses ``cutoff = as_of - 60 days``; the label is 1 when the user makes at least
  one payment in ``[cutoff, as_of)``. Feature and label windows never overlap.
- Scoring at ``as_of`` uses ``cutoff = as_of``.

The Spark code uses only built-in column expressions (no collect, no Python UDFs), so it scales to
millions of users; the pandas code computes the same values for dashboards and tests.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kpi.churn.sources import (
    ID,
    SNAPSHOT_DATE,
    SNAPSHOT_SOURCES,
    SOURCE_FILES,
    USER_BASE,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from kpi.churn.validate import ValidatedSources

LABEL = "label"
LABEL_HORIZON_DAYS = 60
LOOKBACK_DAYS = 120
WINDOWS = (30, 60, 90, 120)
SEGMENTS = ("Instore", "Online", "Utilities", "Transport", "TopUps")
AGE_BANDS = ((18, 24), (25, 34), (35, 44), (45, 54), (55, 64))  # then "65+"; below 18 is "<18"

PAYMENT_FEATURES = (
    [f"pay_count_{w}d" for w in WINDOWS]
    + [f"pay_amount_{w}d" for w in WINDOWS]
    + [
        "days_since_last_payment",
        "days_since_first_payment",
        "distinct_sellers_120d",
        "avg_ticket_120d",
        "discount_share_120d",
        "avg_discount_120d",
    ]
    + [f"segment_share_{s.lower()}" for s in SEGMENTS]
)
SNAPSHOT_FEATURES = [
    "mau_mp_1",
    "mau_ml_1",
    "mau_ml_2",
    "days_since_last_login_mp",
    "plata_cuenta_1",
    "plata_cuenta_2",
    "spent_ml",
    "frequency_ml",
    "days_since_last_ml",
]
NUMERIC_FEATURES: list[str] = [*PAYMENT_FEATURES, "age", *SNAPSHOT_FEATURES]
CATEGORICAL_FEATURES: list[str] = ["gender", "card_type", "city", "investment_status", "age_band"]
FEATURE_COLUMNS: list[str] = NUMERIC_FEATURES + CATEGORICAL_FEATURES

# Value of days_since_last_payment for a user without payments in the lookback window.
NO_PAYMENT_RECENCY = float(LOOKBACK_DAYS + 1)
# snapshot column -> feature (numeric copies); dates become "days before cutoff" below
_SNAPSHOT_NUMERIC = {
    "active_user": {"MAU_MP_1": "mau_mp_1", "MAU_ML_1": "mau_ml_1", "MAU_ML_2": "mau_ml_2"},
    "dinero_cuenta": {"PLATA_CUENTA_1": "plata_cuenta_1", "PLATA_CUENTA_2": "plata_cuenta_2"},
    "marketplace": {"SPENT_ML": "spent_ml", "FREQUENCY_ML": "frequency_ml"},
}
_SNAPSHOT_DATES = {
    "active_user": {"last_login_mp_date_1": "days_since_last_login_mp"},
    "marketplace": {"RECENCY_ML": "days_since_last_ml"},
}
_SNAPSHOT_STRINGS = {"dinero_cuenta": {"INVERSION": "investment_status"}}


class SourceFrames(dict):
    """The five typed sources keyed like :data:`SOURCE_FILES`, plus the validation they passed (``validation``)."""

    validation: ValidatedSources | None = None


@dataclass(frozen=True)
class FeatureSet:
    """The features a model may use at a cutoff, and those the time policy leaves out (with the reason).

    A feature left out is not imputed: it is absent from the model's pipeline, its signature and its
    reference data. ``dropped`` maps each left-out feature to a sentence saying why.
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """Numeric then categorical feature names."""
        return [*self.numeric, *self.categorical]

    def tags(self) -> dict[str, str]:
        """MLflow tags: ``features_used`` (comma-separated) and ``features_dropped`` (JSON: feature -> reason)."""
        return {"features_used": ",".join(self.columns), "features_dropped": json.dumps(self.dropped, sort_keys=True)}


def available_features(sources: dict, cutoff: dt.date) -> FeatureSet:
    """The features usable at ``cutoff`` given the sources' shape (the time policy of ``docs/churn-data.md``).

    A snapshot table without ``SNAPSHOT_DATE`` contributes nothing time-varying (policy 3), and neither does
    a dated one without any snapshot dated on or before the cutoff (policy 2): every feature built from it
    would be null for every user, so it is left out rather than imputed.
    """
    dropped: dict[str, str] = {}
    for source in SNAPSHOT_SOURCES:
        name = SOURCE_FILES[source]
        derived = [*_SNAPSHOT_NUMERIC.get(source, {}).values(), *_SNAPSHOT_DATES.get(source, {}).values(),
                   *_SNAPSHOT_STRINGS.get(source, {}).values()]
        if SNAPSHOT_DATE not in sources[source].columns:
            reason = (f"{name} has no {SNAPSHOT_DATE}: its lagged columns describe the day the file was extracted,"
                      f" which may lie after the cutoff {cutoff.isoformat()} (time policy 3)")
        else:
            earliest = _earliest_snapshot(sources, source)
            if earliest is not None and earliest <= cutoff:
                continue
            reason = (f"{name} has no snapshot dated on or before the cutoff {cutoff.isoformat()}"
                      + (f" (earliest {earliest.isoformat()})" if earliest else " (no rows)") + " (time policy 2)")
        dropped.update({feature: reason for feature in derived})
    return FeatureSet(
        numeric=tuple(c for c in NUMERIC_FEATURES if c not in dropped),
        categorical=tuple(c for c in CATEGORICAL_FEATURES if c not in dropped),
        dropped=dropped,
    )


def _earliest_snapshot(sources: dict, source: str) -> dt.date | None:
    """Earliest SNAPSHOT_DATE of a dated source: from its validation when known, else from the frame."""
    validation = getattr(sources, "validation", None)
    if validation is not None:
        span = validation.snapshot_dates(source)
        return span[0] if span else None
    frame = sources[source]
    import pandas as pd

    if hasattr(frame, "sparkSession"):
        from pyspark.sql import functions as F

        value = frame.agg(F.min(SNAPSHOT_DATE)).first()[0]
    else:
        value = frame[SNAPSHOT_DATE].min()
    if value is None or (not isinstance(value, dt.date) and pd.isna(value)):
        return None
    return value.date() if hasattr(value, "date") and callable(value.date) else value


def training_cutoff(as_of: dt.date) -> dt.date:
    """The feature cutoff of a model trained at ``as_of``: ``as_of - LABEL_HORIZON_DAYS``."""
    return as_of - dt.timedelta(days=LABEL_HORIZON_DAYS)


def age_band(age: float | None) -> str | None:
    """The age band label of one age (None when unknown)."""
    if age is None or math.isnan(age):
        return None
    if age < AGE_BANDS[0][0]:
        return "<18"
    for lo, hi in AGE_BANDS:
        if lo <= age <= hi:
            return f"{lo}-{hi}"
    return "65+"


# --------------------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------------------


def _validated(data_url, settings) -> ValidatedSources:
    """``data_url`` validated (reusing a stored validation), or already a :class:`ValidatedSources`."""
    from kpi.churn.validate import ValidatedSources, ensure_valid_sources

    if isinstance(data_url, ValidatedSources):
        return data_url
    return ensure_valid_sources(str(data_url), settings)


def read_sources_spark(spark: SparkSession, data_url, settings=None) -> SourceFrames:
    """Read the five sources as typed DataFrames keyed like :data:`SOURCE_FILES`, after validation.

    The sources are validated first (:func:`kpi.churn.validate.ensure_valid_sources`: once per data
    version, then reused); Spark reads the clean typed Parquet copy validation wrote, so bad rows are
    left out and no CSV value is parsed a second time. On a local master a remote copy is downloaded
    first (no S3A jars there); on a cluster, ``s3://`` is read through ``s3a://``.

    ``data_url`` may also be the :class:`~kpi.churn.validate.ValidatedSources` of an earlier validation.

    Raises:
        SourceValidationError: a file is missing, has the wrong columns or too many bad rows.
    """
    from kpi.churn.validate import clean_name, local_clean_folder

    validated = _validated(data_url, settings)
    frames = SourceFrames()
    frames.validation = validated
    local = spark.sparkContext.master.startswith("local")
    folder = local_clean_folder(validated, settings).as_uri() if local else validated.clean_url
    for source in SOURCE_FILES:
        url = f"{folder.rstrip('/')}/{clean_name(source)}"
        if url.startswith("s3://"):
            url = "s3a://" + url[len("s3://") :]
        frames[source] = spark.read.parquet(url)
    return frames


def _clean_string(col, upper: bool = False):
    from pyspark.sql import functions as F

    trimmed = F.trim(col)
    trimmed = F.upper(trimmed) if upper else trimmed
    return F.when(trimmed == "", F.lit(None).cast("string")).otherwise(trimmed)


def _age_band_spark(age):
    from pyspark.sql import functions as F

    expr = F.when(age.isNull(), F.lit(None).cast("string")).when(age < AGE_BANDS[0][0], "<18")
    for lo, hi in AGE_BANDS:
        expr = expr.when(age <= hi, f"{lo}-{hi}")
    return expr.otherwise("65+")


def _latest_snapshot_spark(df: DataFrame, cutoff: dt.date) -> DataFrame | None:
    """The latest snapshot row per user dated on or before ``cutoff``; None when the file is undated."""
    from pyspark.sql import functions as F

    if SNAPSHOT_DATE not in df.columns:
        return None
    cols = [c for c in df.columns if c != ID]
    latest = (
        df.where(F.col(SNAPSHOT_DATE) <= F.lit(cutoff))
        .groupBy(ID)
        .agg(F.max_by(F.struct(*cols), F.col(SNAPSHOT_DATE)).alias("_s"))
    )
    return latest.select(ID, *[F.col(f"_s.{c}").alias(c) for c in cols])


def build_features_spark(sources: dict[str, DataFrame], cutoff: dt.date) -> DataFrame:
    """One row per user of the user base with :data:`FEATURE_COLUMNS`, from data strictly before ``cutoff``.

    Args:
        sources: the typed frames of :func:`read_sources_spark`.
        cutoff: the first day the features must not see.

    Returns:
        DataFrame with columns ``[ID, *FEATURE_COLUMNS]``; numeric features are doubles, categorical
        features clean strings (null when unknown).
    """
    return _features_spark(sources, cutoff, as_of=None)


def _features_spark(sources: dict[str, DataFrame], cutoff: dt.date, as_of: dt.date | None) -> DataFrame:
    """Features at ``cutoff``; with ``as_of`` also LABEL and ``_known`` from the same pass over payments.

    One aggregation over payments serves features, label and population, so a training set reads the
    largest file once.
    """
    from pyspark.sql import functions as F

    cut = F.lit(cutoff)
    pay = sources["payments"]
    fecha = F.col("FECHA")
    lookback = (fecha < cut) & (fecha >= F.date_sub(cut, LOOKBACK_DAYS))
    scope = (fecha < F.lit(as_of)) if as_of is not None else lookback
    rows = pay.where(scope & F.col(ID).isNotNull()).select(
        ID,
        lookback.alias("_in"),
        ((fecha >= cut) & (fecha < F.lit(as_of))).alias("_future")
        if as_of is not None
        else F.lit(False).alias("_future"),
        (fecha < cut).alias("_past"),
        F.datediff(cut, fecha).alias("_days"),
        # validation leaves out rows without SPENT or DESCUENTO: a missing amount is never 0.0
        F.col("SPENT").alias("_spent"),
        F.col("DESCUENTO").alias("_discount"),
        F.col("CUS_CUST_ID_SEL").alias("_seller"),
        F.trim(F.col("TPV_SEGMENT_DETAIL")).alias("_segment"),
    )
    inside = F.col("_in")

    def within(days: int):
        return inside & (F.col("_days") <= days)

    aggs = [F.sum(F.when(within(w), 1.0).otherwise(0.0)).alias(f"pay_count_{w}d") for w in WINDOWS]
    aggs += [
        F.sum(F.when(within(w), F.col("_spent")).otherwise(0.0)).alias(f"pay_amount_{w}d") for w in WINDOWS
    ]
    aggs += [
        F.min(F.when(inside, F.col("_days"))).cast("double").alias("days_since_last_payment"),
        F.max(F.when(inside, F.col("_days"))).cast("double").alias("days_since_first_payment"),
        F.countDistinct(F.when(inside, F.col("_seller"))).cast("double").alias("distinct_sellers_120d"),
        (F.sum(F.when(inside, F.col("_spent"))) / F.count(F.when(inside, 1))).alias("avg_ticket_120d"),
        F.avg(F.when(inside, F.when(F.col("_discount") > 0, 1.0).otherwise(0.0))).alias(
            "discount_share_120d"
        ),
        F.avg(F.when(inside, F.col("_discount"))).alias("avg_discount_120d"),
    ]
    aggs += [
        F.avg(F.when(inside, F.when(F.col("_segment") == s, 1.0).otherwise(0.0))).alias(
            f"segment_share_{s.lower()}"
        )
        for s in SEGMENTS
    ]
    aggs += [
        F.max(F.col("_future").cast("int")).alias("_paid"),
        F.max(F.col("_past").cast("int")).alias("_paid_before"),
    ]
    payment_features = rows.groupBy(ID).agg(*aggs)

    users = sources[USER_BASE].where(F.col(ID).isNotNull()).dropDuplicates([ID])
    out = users.select(
        ID,
        F.col("AGE").cast("double").alias("age"),
        _clean_string(F.col("GENDER"), upper=True).alias("gender"),
        _clean_string(F.col("CARD_TYPE"), upper=True).alias("card_type"),
        _clean_string(F.col("CITY")).alias("city"),
        _age_band_spark(F.col("AGE")).alias("age_band"),
    ).join(payment_features, on=ID, how="left")
    fill = {c: 0.0 for c in PAYMENT_FEATURES}
    fill["days_since_last_payment"] = NO_PAYMENT_RECENCY
    out = out.fillna(fill).fillna({"_paid": 0, "_paid_before": 0})

    known = F.col("_paid_before") == 1
    any_dated = False
    for source in SNAPSHOT_SOURCES:
        latest = _latest_snapshot_spark(sources[source], cutoff)
        numeric = _SNAPSHOT_NUMERIC.get(source, {})
        dates = _SNAPSHOT_DATES.get(source, {})
        strings = _SNAPSHOT_STRINGS.get(source, {})
        if latest is None:
            # undated snapshot: its lagged columns may describe days after the cutoff, so they are unusable
            for feat in [*numeric.values(), *dates.values()]:
                out = out.withColumn(feat, F.lit(None).cast("double"))
            for feat in strings.values():
                out = out.withColumn(feat, F.lit(None).cast("string"))
            continue
        any_dated = True
        flag = f"_snap_{source}"
        cols = [F.col(c).cast("double").alias(f) for c, f in numeric.items()]
        # a date on or after the cutoff cannot be known at the cutoff: treat it as unknown
        cols += [
            F.when(F.col(c) < cut, F.datediff(cut, F.col(c)).cast("double")).alias(f)
            for c, f in dates.items()
        ]
        cols += [_clean_string(F.col(c)).alias(f) for c, f in strings.items()]
        out = out.join(latest.select(ID, *cols, F.lit(True).alias(flag)), on=ID, how="left")
        known = known | F.col(flag).isNotNull()
    features = [ID, *[F.col(c).cast("double").alias(c) for c in NUMERIC_FEATURES], *CATEGORICAL_FEATURES]
    if as_of is None:
        return out.select(*features)
    # without any dated snapshot table nobody's arrival is known: the whole user base is the population
    known = known if any_dated else F.lit(True)
    return out.select(*features, F.col("_paid").cast("int").alias(LABEL), known.alias("_known"))


def build_labels_spark(sources: dict[str, DataFrame], cutoff: dt.date, as_of: dt.date) -> DataFrame:
    """``[ID, LABEL]`` for every user of the user base: 1 when a payment falls in ``[cutoff, as_of)``."""
    from pyspark.sql import functions as F

    if not cutoff < as_of:
        raise ValueError(f"label window is empty: cutoff {cutoff} must be before as_of {as_of}")
    payers = (
        sources["payments"]
        .where((F.col("FECHA") >= F.lit(cutoff)) & (F.col("FECHA") < F.lit(as_of)) & F.col(ID).isNotNull())
        .select(ID)
        .distinct()
        .withColumn("_paid", F.lit(1))
    )
    users = sources[USER_BASE].where(F.col(ID).isNotNull()).select(ID).distinct()
    return users.join(payers, on=ID, how="left").select(
        ID, F.coalesce(F.col("_paid"), F.lit(0)).cast("int").alias(LABEL)
    )


def population_spark(sources: dict[str, DataFrame], cutoff: dt.date) -> DataFrame:
    """``[ID]`` of the users known before ``cutoff``: a payment before it or a snapshot row dated on/before it.

    Users who joined after the cutoff are not part of a model trained at that cutoff (they would teach it
    that "no history" means "will pay"). When no snapshot table is dated, every user of the base counts.
    """
    from pyspark.sql import functions as F

    dated = [s for s in SNAPSHOT_SOURCES if SNAPSHOT_DATE in sources[s].columns]
    users = sources[USER_BASE].where(F.col(ID).isNotNull()).select(ID).distinct()
    if not dated:
        return users
    known = sources["payments"].where(F.col("FECHA") < F.lit(cutoff)).select(ID)
    for s in dated:
        known = known.unionByName(sources[s].where(F.col(SNAPSHOT_DATE) <= F.lit(cutoff)).select(ID))
    return users.join(known.distinct(), on=ID, how="left_semi")


@dataclass(frozen=True)
class TrainingData:
    """A training set with what training must know about it: usable features and the validation passed."""

    frame: DataFrame
    features: FeatureSet
    validation: ValidatedSources | None

    @property
    def data_version(self) -> str | None:
        """The sources' data version (None for frames that did not come from validated sources)."""
        return self.validation.data_version if self.validation else None


def training_data_spark(spark: SparkSession, data_url, as_of: dt.date, settings=None) -> TrainingData:
    """The training set at ``as_of`` with its :class:`FeatureSet` (what the time policy makes available).

    ``frame`` keeps every column of :data:`FEATURE_COLUMNS` (a left-out feature is null); a model must use
    only ``features.numeric`` and ``features.categorical``.
    """
    sources = read_sources_spark(spark, data_url, settings)
    cutoff = training_cutoff(as_of)
    if not cutoff < as_of:  # pragma: no cover - LABEL_HORIZON_DAYS is positive
        raise ValueError(f"label window is empty: cutoff {cutoff} must be before as_of {as_of}")
    fused = _features_spark(sources, cutoff, as_of=as_of)
    frame = fused.where("_known").select(ID, *FEATURE_COLUMNS, LABEL)
    return TrainingData(frame=frame, features=available_features(sources, cutoff), validation=sources.validation)


def training_set_spark(spark: SparkSession, data_url, as_of: dt.date, settings=None) -> DataFrame:
    """``[ID, *FEATURE_COLUMNS, LABEL]`` for a model trained at ``as_of`` (cutoff ``as_of - 60d``).

    Same rows and values as joining :func:`build_features_spark`, :func:`population_spark` and
    :func:`build_labels_spark`, computed in one pass over payments.
    """
    return training_data_spark(spark, data_url, as_of, settings).frame


def scoring_set_spark(spark: SparkSession, data_url, as_of: dt.date, settings=None) -> DataFrame:
    """``[ID, *FEATURE_COLUMNS]`` for every user of the sources, scored at ``as_of`` (cutoff ``as_of``)."""
    return build_features_spark(read_sources_spark(spark, data_url, settings), as_of)


def monitoring_set_spark(spark: SparkSession, data_url, as_of: dt.date, settings=None) -> DataFrame:
    """``[ID, *FEATURE_COLUMNS]`` at ``as_of`` for the users a model trained then would have learnt from.

    The eligibility rule of the training population (:func:`population_spark`) applied at ``as_of``:
    drift compares this with the champion's training features, so users who have just joined and left no
    trace yet are on neither side.
    """
    sources = read_sources_spark(spark, data_url, settings)
    features = build_features_spark(sources, as_of)
    return features.join(population_spark(sources, as_of), on=ID, how="left_semi")


# --------------------------------------------------------------------------------------------------
# pandas (same values, no JVM)
# --------------------------------------------------------------------------------------------------


def read_sources_pandas(data_url, settings=None) -> SourceFrames:
    """Read the five validated sources with pandas, typed like the Spark reader (dates as ``datetime64``).

    Validation runs first, exactly as for :func:`read_sources_spark`; the frames come from its clean copy.
    """
    import pyarrow.parquet as pq

    from kpi.storage import filesystem

    validated = _validated(data_url, settings)
    frames = SourceFrames()
    frames.validation = validated
    for source in SOURCE_FILES:
        fs, path = filesystem(validated.clean_file(source), settings)
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        frames[source] = table.to_pandas(date_as_object=False, types_mapper={}.get)
    return frames


def _clean_string_pandas(series: pd.Series, upper: bool = False) -> pd.Series:
    import pandas as pd

    s = series.astype("string").str.strip()
    if upper:
        s = s.str.upper()
    s = s.mask(s == "", pd.NA)
    return s.astype(object).where(s.notna(), None)


def _latest_snapshot_pandas(df: pd.DataFrame, cutoff: dt.date) -> pd.DataFrame | None:
    import pandas as pd

    if SNAPSHOT_DATE not in df.columns:
        return None
    dated = df[df[SNAPSHOT_DATE] <= pd.Timestamp(cutoff)]
    dated = dated.sort_values([ID, SNAPSHOT_DATE], kind="mergesort")
    return dated.drop_duplicates(ID, keep="last")


def build_features_pandas(sources: dict[str, pd.DataFrame], cutoff: dt.date) -> pd.DataFrame:
    """The pandas twin of :func:`build_features_spark` (same columns and values) for small inputs."""
    import numpy as np
    import pandas as pd

    cut = pd.Timestamp(cutoff)
    users = sources[USER_BASE]
    users = users[users[ID].notna()].drop_duplicates(ID)
    out = pd.DataFrame({ID: users[ID].astype("int64").to_numpy()})
    age = pd.to_numeric(users["AGE"], errors="coerce").astype("float64").to_numpy()
    out["age"] = age
    out["gender"] = _clean_string_pandas(users["GENDER"], upper=True).to_numpy()
    out["card_type"] = _clean_string_pandas(users["CARD_TYPE"], upper=True).to_numpy()
    out["city"] = _clean_string_pandas(users["CITY"]).to_numpy()
    out["age_band"] = [age_band(a) for a in age]

    pay = sources["payments"]
    days = (cut - pay["FECHA"]).dt.days
    keep = pay["FECHA"].notna() & (days >= 1) & (days <= LOOKBACK_DAYS) & pay[ID].notna()
    p = pd.DataFrame(
        {
            ID: pay.loc[keep, ID].astype("int64").to_numpy(),
            "_days": days[keep].astype("int64").to_numpy(),
            "_spent": pay.loc[keep, "SPENT"].astype("float64").to_numpy(),
            "_discount": pay.loc[keep, "DESCUENTO"].astype("float64").to_numpy(),
            "_seller": pay.loc[keep, "CUS_CUST_ID_SEL"].to_numpy(),
            "_segment": pay.loc[keep, "TPV_SEGMENT_DETAIL"].astype("string").str.strip().to_numpy(),
        }
    )
    for w in WINDOWS:
        inside = p["_days"] <= w
        p[f"pay_count_{w}d"] = inside.astype("float64")
        p[f"pay_amount_{w}d"] = np.where(inside, p["_spent"], 0.0)
    p["_has_discount"] = (p["_discount"] > 0).astype("float64")
    for s in SEGMENTS:
        p[f"segment_share_{s.lower()}"] = (p["_segment"] == s).fillna(False).astype("float64")
    g = p.groupby(ID, sort=False)
    agg = pd.DataFrame(
        {
            **{f"pay_count_{w}d": g[f"pay_count_{w}d"].sum() for w in WINDOWS},
            **{f"pay_amount_{w}d": g[f"pay_amount_{w}d"].sum() for w in WINDOWS},
            "days_since_last_payment": g["_days"].min().astype("float64"),
            "days_since_first_payment": g["_days"].max().astype("float64"),
            "distinct_sellers_120d": g["_seller"].nunique().astype("float64"),
            "avg_ticket_120d": g["_spent"].sum() / g.size(),
            "discount_share_120d": g["_has_discount"].mean(),
            "avg_discount_120d": g["_discount"].mean(),
            **{f"segment_share_{s.lower()}": g[f"segment_share_{s.lower()}"].mean() for s in SEGMENTS},
        }
    )
    out = out.merge(agg, left_on=ID, right_index=True, how="left")
    for c in PAYMENT_FEATURES:
        out[c] = out[c].fillna(NO_PAYMENT_RECENCY if c == "days_since_last_payment" else 0.0)

    for source in SNAPSHOT_SOURCES:
        latest = _latest_snapshot_pandas(sources[source], cutoff)
        numeric = _SNAPSHOT_NUMERIC.get(source, {})
        dates = _SNAPSHOT_DATES.get(source, {})
        strings = _SNAPSHOT_STRINGS.get(source, {})
        if latest is None:
            for feat in [*numeric.values(), *dates.values()]:
                out[feat] = np.nan
            for feat in strings.values():
                out[feat] = None
            continue
        snap = pd.DataFrame({ID: latest[ID].astype("int64").to_numpy()})
        for c, f in numeric.items():
            snap[f] = pd.to_numeric(latest[c], errors="coerce").astype("float64").to_numpy()
        for c, f in dates.items():
            delta = (cut - latest[c]).dt.days.astype("float64")
            snap[f] = delta.where(latest[c] < cut).to_numpy()
        for c, f in strings.items():
            snap[f] = _clean_string_pandas(latest[c]).to_numpy()
        out = out.merge(snap, on=ID, how="left")
        for f in strings.values():
            out[f] = out[f].astype(object).where(out[f].notna(), None)
    out = out[[ID, *FEATURE_COLUMNS]].copy()
    for c in NUMERIC_FEATURES:
        out[c] = out[c].astype("float64")
    return out.reset_index(drop=True)


def build_labels_pandas(sources: dict[str, pd.DataFrame], cutoff: dt.date, as_of: dt.date) -> pd.DataFrame:
    """The pandas twin of :func:`build_labels_spark`."""
    import pandas as pd

    if not cutoff < as_of:
        raise ValueError(f"label window is empty: cutoff {cutoff} must be before as_of {as_of}")
    pay = sources["payments"]
    inside = (pay["FECHA"] >= pd.Timestamp(cutoff)) & (pay["FECHA"] < pd.Timestamp(as_of))
    payers = set(pay.loc[inside & pay[ID].notna(), ID].astype("int64"))
    users = sources[USER_BASE][ID].dropna().astype("int64").drop_duplicates()
    return pd.DataFrame({ID: users.to_numpy(), LABEL: users.isin(payers).astype("int64").to_numpy()})


def population_pandas(sources: dict[str, pd.DataFrame], cutoff: dt.date) -> pd.Series:
    """The pandas twin of :func:`population_spark` (the ids, as an int64 Series)."""
    import pandas as pd

    users = sources[USER_BASE][ID].dropna().astype("int64").drop_duplicates()
    dated = [s for s in SNAPSHOT_SOURCES if SNAPSHOT_DATE in sources[s].columns]
    if not dated:
        return users.reset_index(drop=True)
    pay = sources["payments"]
    known = set(pay.loc[pay["FECHA"] < pd.Timestamp(cutoff), ID].dropna().astype("int64"))
    for s in dated:
        df = sources[s]
        known |= set(df.loc[df[SNAPSHOT_DATE] <= pd.Timestamp(cutoff), ID].dropna().astype("int64"))
    return users[users.isin(known)].reset_index(drop=True)


def training_set_pandas(data_url, as_of: dt.date, settings=None) -> pd.DataFrame:
    """The pandas twin of :func:`training_set_spark` (small inputs: tests, notebooks, references)."""
    sources = read_sources_pandas(data_url, settings)
    cutoff = training_cutoff(as_of)
    features = build_features_pandas(sources, cutoff)
    features = features[features[ID].isin(population_pandas(sources, cutoff))]
    labels = build_labels_pandas(sources, cutoff, as_of)
    return features.merge(labels, on=ID, how="inner").reset_index(drop=True)


def scoring_set_pandas(data_url, as_of: dt.date, settings=None) -> pd.DataFrame:
    """The pandas twin of :func:`scoring_set_spark`."""
    return build_features_pandas(read_sources_pandas(data_url, settings), as_of)


def monitoring_set_pandas(data_url, as_of: dt.date, settings=None) -> pd.DataFrame:
    """The pandas twin of :func:`monitoring_set_spark`."""
    sources = read_sources_pandas(data_url, settings)
    features = build_features_pandas(sources, as_of)
    return features[features[ID].isin(population_pandas(sources, as_of))].reset_index(drop=True)
