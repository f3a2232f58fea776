"""Point-in-time features and labels: exact values on hand-built sources, leakage, label window, parity."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kpi.churn import features as F
from kpi.churn.sources import ID, SNAPSHOT_DATE, SNAPSHOT_SOURCES, SOURCE_COLUMNS, SOURCE_FILES

CUTOFF = dt.date(2024, 3, 1)
AS_OF = CUTOFF + dt.timedelta(days=60)


def day(offset: int) -> str:
    """The date ``offset`` days after CUTOFF (negative: before it)."""
    return (CUTOFF + dt.timedelta(days=offset)).isoformat()


def write_sources(folder: Path, rows: dict[str, list[dict]], dated: tuple[str, ...]) -> str:
    """Write the five CSVs from row dicts; files named in ``dated`` get a SNAPSHOT_DATE column."""
    folder.mkdir(parents=True, exist_ok=True)
    for source, name in SOURCE_FILES.items():
        columns = SOURCE_COLUMNS[source] + ([SNAPSHOT_DATE] if source in dated else [])
        frame = pd.DataFrame(rows.get(source, []), columns=columns)
        if source in SNAPSHOT_SOURCES and source not in dated:
            frame = frame.drop_duplicates(ID, keep="last")  # the original shape: one snapshot, one row per user
        frame.to_csv(folder / name, index=False)
    return str(folder)


def tiny_sources(folder: Path, dated=("active_user", "marketplace")) -> str:
    """Three users with known histories around CUTOFF (see each row's comment)."""
    pay = [
        # user 1: inside the lookback at 1, 29, 60 and 119 days before the cutoff
        (day(-1), "S1", 1, 100.0, "Instore", 0.10),
        (day(-29), "S2", 1, 50.0, "Utilities", 0.0),
        (day(-60), "S1", 1, 30.0, "Online", 0.05),
        (day(-119), "S3", 1, 20.0, "Transport", 0.0),
        # user 1: outside the lookback (121 days) and at / after the cutoff: never a feature
        (day(-121), "S9", 1, 999.0, "TopUps", 0.2),
        (day(0), "S9", 1, 999.0, "TopUps", 0.2),
        (day(5), "S9", 1, 999.0, "TopUps", 0.2),
        # user 2: pays only after the cutoff (label 1, no features)
        (day(10), "S4", 2, 70.0, "Online", 0.0),
        # user 3: pays exactly at as_of, which is outside [cutoff, as_of): label 0
        (day(60), "S4", 3, 70.0, "Online", 0.0),
    ]
    rows = {
        "payments": [dict(zip(SOURCE_COLUMNS["payments"], r)) for r in pay],
        "demograficos": [
            {ID: 1, "AGE": 34, "GENDER": " f ", "CARD_TYPE": "gold", "CITY": " Rosario "},
            {ID: 2, "AGE": 70, "GENDER": "", "CARD_TYPE": "BLACK", "CITY": "Cordoba"},
            {ID: 3, "AGE": 18, "GENDER": "M", "CARD_TYPE": "CLASSIC", "CITY": ""},
        ],
        "active_user": [
            # user 1: three snapshots; the one dated at the cutoff is the latest usable one
            {
                ID: 1,
                "MAU_MP_1": 5,
                "MAU_ML_1": 1,
                "MAU_ML_2": 1,
                "last_login_mp_date_1": day(-35),
                SNAPSHOT_DATE: day(-30),
            },
            {
                ID: 1,
                "MAU_MP_1": 7,
                "MAU_ML_1": 2,
                "MAU_ML_2": 1,
                "last_login_mp_date_1": day(-2),
                SNAPSHOT_DATE: day(0),
            },
            {
                ID: 1,
                "MAU_MP_1": 31,
                "MAU_ML_1": 9,
                "MAU_ML_2": 2,
                "last_login_mp_date_1": day(20),
                SNAPSHOT_DATE: day(30),
            },
            # user 2: only a snapshot after the cutoff
            {
                ID: 2,
                "MAU_MP_1": 3,
                "MAU_ML_1": 3,
                "MAU_ML_2": 0,
                "last_login_mp_date_1": day(15),
                SNAPSHOT_DATE: day(30),
            },
        ],
        "dinero_cuenta": [
            {ID: 1, "PLATA_CUENTA_1": 500.0, "PLATA_CUENTA_2": 400.0, "INVERSION": "Investing"}
            | ({SNAPSHOT_DATE: day(-10)} if "dinero_cuenta" in dated else {}),
        ],
        "marketplace": [
            {ID: 1, "SPENT_ML": 10.0, "RECENCY_ML": day(-15), "FREQUENCY_ML": 2, SNAPSHOT_DATE: day(-10)},
            # user 3 is known before the cutoff only through this snapshot
            {ID: 3, "SPENT_ML": 0.0, "RECENCY_ML": None, "FREQUENCY_ML": 0, SNAPSHOT_DATE: day(-40)},
        ],
    }
    return write_sources(folder, rows, dated)


EXPECTED_USER_1 = {
    "pay_count_30d": 2,
    "pay_count_60d": 3,
    "pay_count_90d": 3,
    "pay_count_120d": 4,
    "pay_amount_30d": 150.0,
    "pay_amount_60d": 180.0,
    "pay_amount_90d": 180.0,
    "pay_amount_120d": 200.0,
    "days_since_last_payment": 1,
    "days_since_first_payment": 119,
    "distinct_sellers_120d": 3,
    "avg_ticket_120d": 50.0,
    "discount_share_120d": 0.5,
    "avg_discount_120d": 0.0375,
    "segment_share_instore": 0.25,
    "segment_share_online": 0.25,
    "segment_share_utilities": 0.25,
    "segment_share_transport": 0.25,
    "segment_share_topups": 0.0,
    "age": 34,
    "mau_mp_1": 7,
    "mau_ml_1": 2,
    "mau_ml_2": 1,
    "days_since_last_login_mp": 2,
    "plata_cuenta_1": None,  # DINERO_CUENTA is undated here: unusable at a cutoff
    "plata_cuenta_2": None,
    "spent_ml": 10.0,
    "frequency_ml": 2,
    "days_since_last_ml": 15,
    "gender": "F",
    "card_type": "GOLD",
    "city": "Rosario",
    "investment_status": None,
    "age_band": "25-34",
}


def _by_id(df: pd.DataFrame) -> dict[int, dict]:
    return {int(r[ID]): r for r in df.to_dict("records")}


def _assert_value(name, got, want):
    if want is None:
        assert got is None or (isinstance(got, float) and math.isnan(got)), f"{name}: {got!r} should be null"
    elif isinstance(want, str):
        assert got == want, f"{name}: {got!r} != {want!r}"
    else:
        assert got == pytest.approx(want, abs=1e-12), f"{name}: {got!r} != {want!r}"


def features_both(spark, url: str, cutoff: dt.date) -> list[pd.DataFrame]:
    sp = F.build_features_spark(F.read_sources_spark(spark, url), cutoff).toPandas()
    pdf = F.build_features_pandas(F.read_sources_pandas(url), cutoff)
    return [sp, pdf]


@pytest.mark.slow
def test_hand_built_features_have_exact_values_in_spark_and_pandas(spark, tmp_path):
    url = tiny_sources(tmp_path / "src")
    for frame in features_both(spark, url, CUTOFF):
        assert list(frame.columns) == [ID, *F.FEATURE_COLUMNS]
        rows = _by_id(frame)
        assert set(rows) == {1, 2, 3}
        for name, want in EXPECTED_USER_1.items():
            _assert_value(name, rows[1][name], want)
        # user 2: no payment before the cutoff, only a snapshot after it
        assert rows[2]["pay_count_120d"] == 0 and rows[2]["pay_amount_120d"] == 0
        assert rows[2]["days_since_last_payment"] == F.NO_PAYMENT_RECENCY
        assert rows[2]["days_since_first_payment"] == 0
        for name in ("mau_mp_1", "days_since_last_login_mp", "spent_ml"):
            _assert_value(name, rows[2][name], None)
        _assert_value("gender", rows[2]["gender"], None)
        assert rows[2]["age_band"] == "65+"
        # user 3: a marketplace snapshot without a last purchase date
        assert rows[3]["frequency_ml"] == 0
        _assert_value("days_since_last_ml", rows[3]["days_since_last_ml"], None)
        _assert_value("city", rows[3]["city"], None)
        assert rows[3]["age_band"] == "18-24"


@pytest.mark.slow
def test_labels_cover_cutoff_inclusive_to_as_of_exclusive(spark, tmp_path):
    url = tiny_sources(tmp_path / "src")
    sp = F.build_labels_spark(F.read_sources_spark(spark, url), CUTOFF, AS_OF).toPandas()
    pdf = F.build_labels_pandas(F.read_sources_pandas(url), CUTOFF, AS_OF)
    for labels in (sp, pdf):
        got = dict(zip(labels[ID].astype(int), labels[F.LABEL].astype(int)))
        # 1: pays at the cutoff day itself; 2: pays 10 days after; 3: pays exactly at as_of (excluded)
        assert got == {1: 1, 2: 1, 3: 0}
    with pytest.raises(ValueError, match="label window is empty"):
        F.build_labels_pandas(F.read_sources_pandas(url), AS_OF, AS_OF)


@pytest.mark.slow
def test_training_population_excludes_users_unknown_before_the_cutoff(spark, tmp_path):
    url = tiny_sources(tmp_path / "src")
    sp = F.training_set_spark(spark, url, AS_OF).toPandas()
    pdf = F.training_set_pandas(url, AS_OF)
    for frame in (sp, pdf):
        assert list(frame.columns) == [ID, *F.FEATURE_COLUMNS, F.LABEL]
        # user 2 appears only after the cutoff; users 1 (payments) and 3 (a snapshot) were known before it
        assert sorted(frame[ID].astype(int)) == [1, 3]
    # without any dated snapshot table, the whole user base is the population
    undated = tiny_sources(tmp_path / "undated", dated=())
    assert sorted(F.training_set_pandas(undated, AS_OF)[ID]) == [1, 2, 3]
    # drift's current side follows the same rule at its own date: at CUTOFF, user 2 is not known yet
    for frame in (F.monitoring_set_spark(spark, url, CUTOFF).toPandas(), F.monitoring_set_pandas(url, CUTOFF)):
        assert sorted(frame[ID].astype(int)) == [1, 3] and list(frame.columns) == [ID, *F.FEATURE_COLUMNS]
    assert sorted(F.scoring_set_pandas(url, CUTOFF)[ID]) == [1, 2, 3]


def test_dated_snapshot_after_cutoff_and_undated_snapshots_are_not_used(tmp_path):
    dated = F.build_features_pandas(
        F.read_sources_pandas(
            tiny_sources(tmp_path / "a", dated=("active_user", "dinero_cuenta", "marketplace"))
        ),
        CUTOFF,
    )
    row = _by_id(dated)[1]
    # DINERO_CUENTA dated 10 days before the cutoff: usable
    assert row["plata_cuenta_1"] == 500.0 and row["investment_status"] == "Investing"
    # the same file without dates: its lagged columns may describe the label window, so they are null
    undated = F.build_features_pandas(F.read_sources_pandas(tiny_sources(tmp_path / "b", dated=())), CUTOFF)
    for name in F.SNAPSHOT_FEATURES:
        assert undated[name].isna().all(), name
    assert undated["investment_status"].isna().all()
    # static attributes stay usable
    assert _by_id(undated)[1]["card_type"] == "GOLD"


def test_the_time_policy_leaves_out_unavailable_features_and_says_why(tmp_path):
    undated = F.read_sources_pandas(tiny_sources(tmp_path / "undated", dated=()))
    features = F.available_features(undated, CUTOFF)
    assert set(features.dropped) == {*F.SNAPSHOT_FEATURES, "investment_status"}
    assert features.columns == [c for c in F.FEATURE_COLUMNS if c not in features.dropped]
    assert "age" in features.numeric and "card_type" in features.categorical
    assert features.dropped["mau_mp_1"].startswith("ACTIVE_USER.csv has no SNAPSHOT_DATE")
    assert features.dropped["investment_status"].startswith("DINERO_CUENTA.csv has no SNAPSHOT_DATE")
    tags = features.tags()
    assert tags["features_used"].split(",") == features.columns
    assert json.loads(tags["features_dropped"]) == features.dropped
    # dated tables: usable when a snapshot is dated on or before the cutoff (ACTIVE_USER's earliest is
    # 30 days before it), left out when every snapshot is later (with the earliest date in the reason)
    dated = F.read_sources_pandas(tiny_sources(tmp_path / "dated", dated=("active_user", "dinero_cuenta", "marketplace")))
    assert F.available_features(dated, CUTOFF).dropped == {}
    early = CUTOFF - dt.timedelta(days=31)
    dropped = F.available_features(dated, early).dropped
    assert {"mau_mp_1", "plata_cuenta_1"} <= set(dropped) and "spent_ml" not in dropped  # MARKETPLACE: day -40
    assert dropped["mau_mp_1"] == (f"ACTIVE_USER.csv has no snapshot dated on or before the cutoff {early}"
                                   f" (earliest {day(-30)}) (time policy 2)")


@pytest.mark.slow
def test_a_payment_without_an_amount_is_left_out_not_counted_as_zero(spark, tmp_path):
    from kpi.settings import Settings

    url = tiny_sources(tmp_path / "src")
    path = Path(url) / "PAYMENTS.csv"
    # user 1 pays 3 days before the cutoff, but SPENT is empty: under a PERMISSIVE CSV read this was NULL,
    # then 0.0, and the payment counted
    path.write_text(path.read_text() + f"{day(-3)},S5,1,,Instore,0.0\n")
    settings = Settings(env="test", home=tmp_path / "home", storage_url=(tmp_path / "storage").as_uri(),
                        churn_max_bad_row_share=0.5)
    sp = F.build_features_spark(F.read_sources_spark(spark, url, settings), CUTOFF).toPandas()
    pdf = F.build_features_pandas(F.read_sources_pandas(url, settings), CUTOFF)
    for frame in (sp, pdf):
        row = _by_id(frame)[1]
        for name in ("pay_count_30d", "pay_count_120d", "days_since_last_payment", "avg_ticket_120d"):
            _assert_value(name, row[name], EXPECTED_USER_1[name])


def _perturb_future(folder: Path, cutoff: dt.date, seed: int = 0) -> None:
    """Change everything at or after ``cutoff``: drop real payments, add fake ones, rewrite later snapshots."""
    rng = np.random.default_rng(seed)
    pay = pd.read_csv(folder / "PAYMENTS.csv")
    fecha = pd.to_datetime(pay["FECHA"])
    past = pay[fecha < pd.Timestamp(cutoff)]
    users = pd.read_csv(folder / "DEMOGRAFICOS.csv")[ID].to_numpy()
    n = 5000
    fake = pd.DataFrame(
        {
            "FECHA": [(cutoff + dt.timedelta(days=int(d))).isoformat() for d in rng.integers(0, 90, n)],
            "CUS_CUST_ID_SEL": [f"SELLER_X{i}" for i in rng.integers(0, 50, n)],
            ID: rng.choice(users, n),
            "SPENT": rng.uniform(1, 5000, n).round(2),
            "TPV_SEGMENT_DETAIL": rng.choice(["Instore", "TopUps"], n),
            "DESCUENTO": rng.uniform(0, 0.5, n).round(2),
        }
    )
    pd.concat([fake, past]).to_csv(folder / "PAYMENTS.csv", index=False)
    for name in ("ACTIVE_USER.csv", "DINERO_CUENTA.csv", "MARKETPLACE_DATA.csv"):
        snap = pd.read_csv(folder / name)
        later = pd.to_datetime(snap[SNAPSHOT_DATE]) > pd.Timestamp(cutoff)
        numeric = [
            c for c in snap.columns if c not in (ID, SNAPSHOT_DATE) and pd.api.types.is_numeric_dtype(snap[c])
        ]
        for c in numeric:  # different values, still valid ones (validation would leave out invalid rows)
            changed = 31 - snap.loc[later, c] if c.startswith("MAU_") else snap.loc[later, c] * 3 + 1
            snap.loc[later, c] = changed
        snap.to_csv(folder / name, index=False)


def test_changing_data_at_or_after_the_cutoff_changes_no_feature_pandas(churn_data, copy_sources, tmp_path):
    before = F.build_features_pandas(F.read_sources_pandas(churn_data.url), churn_data.cutoff)
    changed = copy_sources(tmp_path / "changed")
    _perturb_future(changed, churn_data.cutoff)
    after = F.build_features_pandas(F.read_sources_pandas(str(changed)), churn_data.cutoff)
    pd.testing.assert_frame_equal(
        before.sort_values(ID).reset_index(drop=True), after.sort_values(ID).reset_index(drop=True)
    )
    # and the perturbation is real: the labels did change
    assert not F.build_labels_pandas(
        F.read_sources_pandas(churn_data.url), churn_data.cutoff, churn_data.as_of
    ).equals(F.build_labels_pandas(F.read_sources_pandas(str(changed)), churn_data.cutoff, churn_data.as_of))


@pytest.mark.slow
def test_changing_data_at_or_after_the_cutoff_changes_no_feature_spark(
    spark, churn_data, copy_sources, tmp_path
):
    changed = copy_sources(tmp_path / "changed")
    _perturb_future(changed, churn_data.cutoff, seed=1)
    frames = []
    for url in (churn_data.url, str(changed)):
        df = F.build_features_spark(F.read_sources_spark(spark, url), churn_data.cutoff).toPandas()
        frames.append(df.sort_values(ID).reset_index(drop=True))
    pd.testing.assert_frame_equal(frames[0], frames[1])


def _assert_parity(sp: pd.DataFrame, pdf: pd.DataFrame) -> None:
    sp = sp.sort_values(ID).reset_index(drop=True)
    pdf = pdf.sort_values(ID).reset_index(drop=True)
    assert list(sp.columns) == list(pdf.columns)
    assert (sp[ID].astype("int64").to_numpy() == pdf[ID].to_numpy()).all()
    for c in F.NUMERIC_FEATURES:
        a, b = sp[c].to_numpy(dtype="float64"), pdf[c].to_numpy(dtype="float64")
        assert np.array_equal(np.isnan(a), np.isnan(b)), c
        assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-9, atol=1e-9), c
    for c in F.CATEGORICAL_FEATURES:
        a = sp[c].astype(object).where(sp[c].notna(), None).tolist()
        b = pdf[c].astype(object).where(pdf[c].notna(), None).tolist()
        assert a == b, c


@pytest.mark.slow
def test_pandas_features_match_spark_on_simulated_sources(spark, churn_data):
    sources_sp = F.read_sources_spark(spark, churn_data.url)
    sources_pd = F.read_sources_pandas(churn_data.url)
    for cutoff in (churn_data.cutoff, churn_data.as_of):
        _assert_parity(
            F.build_features_spark(sources_sp, cutoff).toPandas(), F.build_features_pandas(sources_pd, cutoff)
        )
    sp_train = F.training_set_spark(spark, churn_data.url, churn_data.as_of).toPandas().sort_values(ID)
    pd_train = F.training_set_pandas(churn_data.url, churn_data.as_of).sort_values(ID)
    assert sp_train[ID].tolist() == pd_train[ID].tolist()
    assert sp_train[F.LABEL].tolist() == pd_train[F.LABEL].tolist()
    assert sp_train[ID].is_unique and 0.3 < sp_train[F.LABEL].mean() < 0.9


def test_scoring_set_has_every_user_and_clean_categories(churn_data):
    scoring = F.scoring_set_pandas(churn_data.url, churn_data.as_of)
    assert len(scoring) == churn_data.users and scoring[ID].is_unique
    assert set(scoring["card_type"].dropna()) <= {"CLASSIC", "GOLD", "PLATINUM", "BLACK"}
    assert set(scoring["gender"].dropna()) <= {"F", "M"}
    assert set(scoring["investment_status"].dropna()) <= {"Investing", "Eligible", "Pending", "Warmup"}
    assert scoring["age_band"].notna().all()
    # scoring at as_of sees the snapshot dated as_of: every user has one
    assert scoring["mau_mp_1"].notna().all()


def test_a_quick_model_on_the_features_learns_the_simulated_signal(churn_data):
    from kpi.churn.simulate import roc_auc
    from sklearn.ensemble import HistGradientBoostingClassifier

    train = F.training_set_pandas(churn_data.url, churn_data.as_of)
    scoring = F.scoring_set_pandas(churn_data.url, churn_data.as_of)
    outcomes = pd.read_csv(churn_data.path / "OUTCOMES.csv")
    scoring = scoring.merge(outcomes, on=ID)

    def design(df):
        x = df[F.FEATURE_COLUMNS].copy()
        for c in F.CATEGORICAL_FEATURES:
            x[c] = x[c].astype("category")
        return x

    from threadpoolctl import threadpool_limits

    model = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=60, random_state=0)
    with threadpool_limits(1):  # OpenMP threads spin badly on a shared, oversubscribed machine
        model.fit(design(train), train[F.LABEL])
        auc = roc_auc(scoring["active_next_60d"], model.predict_proba(design(scoring))[:, 1])
    oracle = churn_data.summary["oracle_auc"]
    print(f"quick model AUC on the true outcome {auc:.4f}, oracle {oracle:.4f}")
    assert auc > 0.8
    assert auc <= oracle + 0.02  # nobody beats the true probabilities beyond sampling noise
