"""Simulated churn sources with a known, learnable signal (``kpi churn simulate``).

Every user has a latent engagement ``z`` (partly explained by card type and age) that sets three rates
of a two-state process: while *active* the user pays ``lam`` times a day (Poisson), goes *dormant* at
hazard ``kappa`` and, once dormant, comes back at hazard ``rho``. Higher ``z``: more payments, rarer
dormancy, faster return. The process runs from 60 days before the history starts to 60 days after the
as-of date ``D``; PAYMENTS holds the six months before ``D``, the snapshot tables describe the same
process (app logins, marketplace purchases, account balance), and OUTCOMES.csv holds, per user, the
exact probability of at least one payment in ``[D, D+60)`` given the state at ``D`` (two-state Markov
chain, closed form) and the realised outcome of the simulated process. The oracle AUC scores the
realised outcome with those probabilities: the ceiling any model of the observable data can approach.

Users are generated in fixed-size chunks, each with its own child seed, so the output is identical for a
seed whatever the machine, and memory stays bounded at a million users. See ``docs/churn-data.md``.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import numpy as np

from kpi.churn.sources import ID, OUTCOMES_FILE, SNAPSHOT_DATE, SOURCE_COLUMNS, SOURCE_FILES

HISTORY_DAYS = 180  # six months of payments up to the as-of date
BURN_IN_DAYS = 60  # the process runs before the history so the first snapshots have a past
OUTCOME_DAYS = 60
SNAPSHOT_EVERY_DAYS = 30
SNAPSHOTS = 6  # snapshots dated D, D-30, ..., D-150
CHUNK_USERS = 50_000
ID_BASE = 100_000_001
MAX_SEGMENTS = 12

CARD_TYPES = np.array(["CLASSIC", "GOLD", "PLATINUM", "BLACK"])
CARD_SCORE = np.array([-0.6, 0.0, 0.6, 1.2])
CITIES = np.array(
    [
        "Buenos Aires",
        "Cordoba",
        "Rosario",
        "Mendoza",
        "La Plata",
        "Mar del Plata",
        "San Miguel de Tucuman",
        "Salta",
        "Santa Fe",
        "Neuquen",
    ]
)
CITY_WEIGHTS = np.array([0.38, 0.12, 0.1, 0.08, 0.07, 0.06, 0.06, 0.05, 0.04, 0.04])
SEGMENTS = np.array(["Instore", "Online", "Utilities", "Transport", "TopUps"])
SEGMENT_BASE = np.array([0.8, 0.5, 0.0, 0.2, -0.2])
SEGMENT_Z = np.array([0.0, 0.1, 0.5, 0.0, -0.4])  # engaged users pay bills, disengaged ones top up
INVESTMENT = np.array(["Investing", "Eligible", "Pending", "Warmup"])


@dataclass(frozen=True)
class Scenario:
    """Behaviour knobs; ``shifted`` is the demo's second round (less engagement, inflation, promotions)."""

    name: str = "baseline"
    z_shift: float = 0.0
    amount_factor: float = 1.0
    discount_shift: float = 0.0
    card_weights: tuple[float, ...] = (0.45, 0.30, 0.17, 0.08)
    new_user_share: float = 0.15


SCENARIOS = {
    "baseline": Scenario(),
    "shifted": Scenario(
        name="shifted",
        z_shift=-0.35,
        amount_factor=1.6,
        discount_shift=0.8,
        card_weights=(0.60, 0.25, 0.11, 0.04),
        new_user_share=0.25,
    ),
}


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank statistic (ties get average ranks); NaN when only one class is present."""
    import pandas as pd

    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(score, dtype="float64")).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def p_no_payment(
    lam: np.ndarray, kappa: np.ndarray, rho: np.ndarray, t: float
) -> tuple[np.ndarray, np.ndarray]:
    """P(no payment during ``t`` days) starting active, and starting dormant.

    The chain {active, dormant} with generator [[-kappa, kappa], [rho, -rho]] is killed at rate ``lam``
    while active; the answer is exp(M t) @ 1 with M = [[-(kappa+lam), kappa], [rho, -rho]], in closed
    form through M's two real eigenvalues.
    """
    tr = -(kappa + lam + rho)
    det = lam * rho
    root = np.sqrt(np.maximum(tr * tr - 4 * det, 0.0))
    e1, e2 = (tr + root) / 2, (tr - root) / 2
    gap = np.where(e1 - e2 == 0, 1e-12, e1 - e2)
    x1, x2 = np.exp(e1 * t), np.exp(e2 * t)
    from_active = (x1 * (-lam - e2) - x2 * (-lam - e1)) / gap
    from_dormant = (x1 * (-e2) - x2 * (-e1)) / gap
    return np.clip(from_active, 0.0, 1.0), np.clip(from_dormant, 0.0, 1.0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _overlap(starts, ends, active, lo, hi):
    """Days of active state inside [lo, hi) per user (lo/hi scalars or per-user arrays)."""
    lo = np.asarray(lo, dtype="float64").reshape(-1, 1) if np.ndim(lo) else lo
    hi = np.asarray(hi, dtype="float64").reshape(-1, 1) if np.ndim(hi) else hi
    span = np.minimum(ends, hi) - np.maximum(starts, lo)
    return np.where(active, np.clip(span, 0.0, None), 0.0).sum(axis=1)


def _state_at(starts, ends, active, t):
    """True where the user is active at time ``t``."""
    inside = (starts <= t) & (t < ends)
    return (inside & active).any(axis=1)


def _last_in_bucket(rng, hi, counts):
    """Day of the last of ``counts`` events placed uniformly in the 30 days before ``hi`` (NaN if none)."""
    gap = np.floor(SNAPSHOT_EVERY_DAYS * rng.beta(1.0, np.maximum(counts, 1)))
    return np.where(counts > 0, hi - 1 - np.minimum(gap, SNAPSHOT_EVERY_DAYS - 1), np.nan)


def simulate_chunk(rng: np.random.Generator, ids: np.ndarray, scenario: Scenario) -> dict:
    """Simulate one chunk of users; returns column arrays per file (days are offsets from history start)."""
    n = len(ids)
    end = HISTORY_DAYS + OUTCOME_DAYS
    # --- static attributes and the latent engagement ---------------------------------------------
    card = rng.choice(len(CARD_TYPES), size=n, p=np.array(scenario.card_weights))
    age = np.clip(np.round(rng.normal(38, 12, n)), 18, 80).astype("int64")
    gender = rng.choice(2, size=n)
    city = rng.choice(len(CITIES), size=n, p=CITY_WEIGHTS / CITY_WEIGHTS.sum())
    z = 0.45 * CARD_SCORE[card] + 0.15 * (age - 38) / 12 + 0.85 * rng.normal(size=n) + scenario.z_shift
    lam = np.exp(-1.4 + 0.55 * z + 0.45 * rng.normal(size=n))
    kappa = np.exp(-4.9 - 0.8 * z)
    rho = np.exp(-5.0 + 0.5 * z)

    is_new = rng.random(n) < scenario.new_user_share
    signup = np.where(is_new, rng.uniform(0, HISTORY_DAYS, n), -float(BURN_IN_DAYS))
    pi_active = rho / (kappa + rho)
    state = np.where(is_new, True, rng.random(n) < pi_active)

    # --- alternating active / dormant segments from signup to the end of the outcome window --------
    starts = np.empty((n, MAX_SEGMENTS))
    ends = np.empty((n, MAX_SEGMENTS))
    active = np.empty((n, MAX_SEGMENTS), dtype=bool)
    t = signup.copy()
    for k in range(MAX_SEGMENTS):
        rate = np.where(state, kappa, rho)
        dur = rng.exponential(1.0 / rate)
        stop = np.minimum(t + dur, end) if k < MAX_SEGMENTS - 1 else np.full(n, float(end))
        starts[:, k], ends[:, k], active[:, k] = t, stop, state
        t = stop
        state = ~state
    starts = np.minimum(starts, end)

    # --- payments in [max(signup, 0), HISTORY_DAYS): Poisson counts, uniform times --------------------
    p_lo = np.clip(starts, 0, HISTORY_DAYS)
    p_hi = np.clip(ends, 0, HISTORY_DAYS)
    length = np.where(active, np.clip(p_hi - p_lo, 0, None), 0.0)
    counts = rng.poisson(lam[:, None] * length)
    flat = counts.ravel()
    user_idx = np.repeat(np.repeat(np.arange(n), MAX_SEGMENTS), flat)
    seg_lo = np.repeat(p_lo.ravel(), flat)
    seg_len = np.repeat(length.ravel(), flat)
    day = np.floor(seg_lo + seg_len * rng.random(len(user_idx))).astype("int64")
    day = np.clip(day, 0, HISTORY_DAYS - 1)
    order = np.lexsort((user_idx, day))
    user_idx, day = user_idx[order], day[order]
    m = len(user_idx)

    ticket = np.exp(4.1 + 0.35 * CARD_SCORE[card] + 0.5 * rng.normal(size=n)) * scenario.amount_factor
    spent = np.round(ticket[user_idx] * rng.lognormal(0.0, 0.6, m), 2)
    spent = np.maximum(spent, 0.01)
    seg_logits = SEGMENT_BASE + np.outer(z, SEGMENT_Z) + 0.6 * rng.normal(size=(n, len(SEGMENTS)))
    seg_p = np.exp(seg_logits)
    seg_cdf = np.cumsum(seg_p / seg_p.sum(axis=1, keepdims=True), axis=1)
    u = rng.random(m)
    segment = (u[:, None] > seg_cdf[user_idx]).sum(axis=1).clip(0, len(SEGMENTS) - 1)
    promo_share = _sigmoid(-1.1 - 0.45 * z + 0.5 * rng.normal(size=n) + scenario.discount_shift)
    has_discount = rng.random(m) < promo_share[user_idx]
    discount = np.where(has_discount, np.round(rng.uniform(0.01, 0.25, m), 2), 0.0)
    n_sellers = max(1000, len(ids) * 2)
    favourite = rng.integers(0, n_sellers, n)
    seller = np.where(
        rng.random(m) < 0.5, favourite[user_idx], np.floor(n_sellers * rng.random(m) ** 3).astype("int64")
    )

    # --- snapshot tables ----------------------------------------------------------------------------
    # bucket b covers [HISTORY_DAYS - 30(b+1), HISTORY_DAYS - 30b); snapshot k is dated HISTORY_DAYS - 30k
    n_buckets = SNAPSHOTS + 2
    bucket_hi = HISTORY_DAYS - SNAPSHOT_EVERY_DAYS * np.arange(n_buckets)
    exists = np.stack(
        [np.clip(bucket_hi[b] - np.maximum(signup, bucket_hi[b] - 30), 0, 30) for b in range(n_buckets)], 1
    )
    f_active = (
        np.stack(
            [_overlap(starts, ends, active, bucket_hi[b] - 30, bucket_hi[b]) for b in range(n_buckets)], 1
        )
        / SNAPSHOT_EVERY_DAYS
    )
    p_login_active = _sigmoid(0.3 + 0.6 * z)
    p_login = f_active * p_login_active[:, None] + (exists / 30 - f_active).clip(0, None) * 0.02
    mp_days = rng.binomial(30, np.clip(p_login, 0, 1))
    p_ml = _sigmoid(-1.4 + 0.5 * z + 0.5 * rng.normal(size=n))
    ml_days = rng.binomial(30, np.clip(p_ml[:, None] * (exists / 30) * (0.3 + 0.7 * f_active), 0, 1))
    ml_buys = rng.poisson(0.15 * ml_days)
    ml_ticket = np.exp(4.6 + 0.3 * CARD_SCORE[card] + 0.4 * rng.normal(size=n)) * scenario.amount_factor
    ml_spent = np.round(rng.gamma(np.maximum(ml_buys, 1e-9), 1.0) * ml_ticket[:, None], 2) * (ml_buys > 0)

    # last login / last marketplace purchase: carried forward from older buckets when a bucket is empty
    last_login = np.full((n, n_buckets), np.nan)
    last_buy = np.full((n, n_buckets), np.nan)
    prev_login = np.full(n, np.nan)
    prev_buy = np.full(n, np.nan)
    for b in range(n_buckets - 1, -1, -1):
        login = _last_in_bucket(rng, bucket_hi[b], mp_days[:, b])
        buy = _last_in_bucket(rng, bucket_hi[b], ml_buys[:, b])
        prev_login = np.where(np.isnan(login), prev_login, login)
        prev_buy = np.where(np.isnan(buy), prev_buy, buy)
        last_login[:, b] = prev_login
        last_buy[:, b] = prev_buy

    balance_base = np.exp(5.6 + 0.6 * CARD_SCORE[card] + 0.4 * z + 0.8 * rng.normal(size=n))
    balance = np.round(
        balance_base[:, None]
        * np.exp(0.3 * rng.normal(size=(n, n_buckets)))
        * (0.3 + 0.7 * f_active)
        * (exists > 0),
        2,
    )
    invest_pref = _sigmoid(0.3 * z + rng.normal(size=n)) > 0.55

    snap_rows = []
    for k in range(SNAPSHOTS):
        s = bucket_hi[k]
        member = signup < s
        status = np.where(
            s - signup <= 30,
            3,
            np.where(invest_pref & (balance[:, k] > 400), 0, np.where(balance[:, k] > 150, 1, 2)),
        )
        snap_rows.append(
            {
                "idx": np.nonzero(member)[0],
                "date": s,
                "mau_mp_1": mp_days[:, k],
                "mau_ml_1": ml_days[:, k],
                "mau_ml_2": ml_days[:, k + 1],
                "last_login": last_login[:, k],
                "plata_1": balance[:, k],
                "plata_2": balance[:, k + 1],
                "inversion": status,
                "spent_ml": ml_spent[:, k : k + 3].sum(axis=1).round(2),
                "frequency_ml": ml_buys[:, k : k + 3].sum(axis=1),
                "recency_ml": last_buy[:, k],
            }
        )

    # --- outcome: exact probability given the state at D, and the simulated realisation ---------------
    active_at_d = _state_at(starts, ends, active, float(HISTORY_DAYS))
    none_active, none_dormant = p_no_payment(lam, kappa, rho, float(OUTCOME_DAYS))
    p_true = 1.0 - np.where(active_at_d, none_active, none_dormant)
    future = _overlap(starts, ends, active, float(HISTORY_DAYS), float(end))
    realised = rng.poisson(lam * future) > 0

    return {
        "ids": ids,
        "age": age,
        "gender": gender,
        "card": card,
        "city": city,
        "payments": {
            "user_idx": user_idx,
            "day": day,
            "seller": seller,
            "spent": spent,
            "segment": segment,
            "discount": discount,
        },
        "snapshots": snap_rows,
        "p_true": p_true,
        "realised": realised,
    }


def _date32(days_from_start: np.ndarray, start: dt.date):
    """pyarrow date32 array from day offsets (NaN -> null)."""
    import pyarrow as pa

    epoch = (start - dt.date(1970, 1, 1)).days
    values = np.asarray(days_from_start, dtype="float64")
    mask = np.isnan(values)
    out = np.where(mask, 0, values + epoch).astype("int32")
    return pa.array(out, type=pa.date32(), mask=mask)


def _strings(codes: np.ndarray, labels: np.ndarray):
    import pyarrow as pa
    import pyarrow.compute as pc

    dictionary = pa.DictionaryArray.from_arrays(pa.array(codes.astype("int32")), pa.array(labels.tolist()))
    return pc.cast(dictionary, pa.string())


def _tables(chunk: dict, start: dt.date, dated: bool) -> dict:
    """pyarrow tables per file for one chunk, in the original column order (+ SNAPSHOT_DATE when dated)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = chunk["ids"]
    pay = chunk["payments"]
    tables = {
        "payments": pa.table(
            {
                "FECHA": _date32(pay["day"], start),
                "CUS_CUST_ID_SEL": pc.binary_join_element_wise(
                    "SELLER_", pc.cast(pa.array(pay["seller"]), pa.string()), ""
                ),
                ID: pa.array(ids[pay["user_idx"]]),
                "SPENT": pa.array(pay["spent"]),
                "TPV_SEGMENT_DETAIL": _strings(pay["segment"], SEGMENTS),
                "DESCUENTO": pa.array(pay["discount"]),
            }
        ),
        "demograficos": pa.table(
            {
                ID: pa.array(ids),
                "AGE": pa.array(chunk["age"]),
                "GENDER": _strings(chunk["gender"], np.array(["F", "M"])),
                "CARD_TYPE": _strings(chunk["card"], CARD_TYPES),
                "CITY": _strings(chunk["city"], CITIES),
            }
        ),
    }
    snaps = chunk["snapshots"] if dated else chunk["snapshots"][:1]
    parts: dict[str, list] = {"active_user": [], "dinero_cuenta": [], "marketplace": []}
    for snap in snaps:
        idx = snap["idx"]
        extra = (
            {SNAPSHOT_DATE: _date32(np.full(len(idx), snap["date"], dtype="float64"), start)} if dated else {}
        )
        parts["active_user"].append(
            pa.table(
                {
                    ID: pa.array(ids[idx]),
                    "MAU_MP_1": pa.array(snap["mau_mp_1"][idx]),
                    "MAU_ML_1": pa.array(snap["mau_ml_1"][idx]),
                    "MAU_ML_2": pa.array(snap["mau_ml_2"][idx]),
                    "last_login_mp_date_1": _date32(snap["last_login"][idx], start),
                    **extra,
                }
            )
        )
        parts["dinero_cuenta"].append(
            pa.table(
                {
                    ID: pa.array(ids[idx]),
                    "PLATA_CUENTA_1": pa.array(snap["plata_1"][idx]),
                    "PLATA_CUENTA_2": pa.array(snap["plata_2"][idx]),
                    "INVERSION": _strings(snap["inversion"][idx], INVESTMENT),
                    **extra,
                }
            )
        )
        parts["marketplace"].append(
            pa.table(
                {
                    ID: pa.array(ids[idx]),
                    "SPENT_ML": pa.array(snap["spent_ml"][idx]),
                    "RECENCY_ML": _date32(snap["recency_ml"][idx], start),
                    "FREQUENCY_ML": pa.array(snap["frequency_ml"][idx]),
                    **extra,
                }
            )
        )
    for name, tabs in parts.items():
        tables[name] = pa.concat_tables(tabs)
    tables["outcomes"] = pa.table(
        {
            ID: pa.array(ids),
            "p_true": pa.array(np.round(chunk["p_true"], 6)),
            "active_next_60d": pa.array(chunk["realised"].astype("int8")),
        }
    )
    return tables


class _CsvSink:
    """One CSV file written chunk by chunk (header written once, no quoting: values hold no commas)."""

    def __init__(self, url: str, columns: list[str], settings=None):
        from kpi.storage import filesystem

        fs, path = filesystem(url, settings)
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        self.columns = columns
        self.fh = fs.open(path, "wb")
        self.fh.write((",".join(columns) + "\n").encode())
        self.rows = 0

    def write(self, table) -> None:
        import pyarrow.csv as pacsv

        pacsv.write_csv(
            table.select(self.columns),
            self.fh,
            pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 16),
        )
        self.rows += table.num_rows

    def close(self) -> None:
        self.fh.close()


def simulate_sources(
    out: str,
    users: int,
    as_of: dt.date,
    seed: int = 42,
    scenario: str = "baseline",
    dated_snapshots: bool = True,
    settings=None,
) -> dict:
    """Write the five source CSVs and OUTCOMES.csv for ``users`` users under ``out`` (path or URL).

    Args:
        out: local folder, file:// or s3:// URL.
        users: number of users (the user base in DEMOGRAFICOS.csv).
        as_of: the as-of date D; payments cover [D-180, D), outcomes [D, D+60).
        seed: the whole output is a function of (users, as_of, seed, scenario, dated_snapshots).
        scenario: ``baseline`` or ``shifted`` (lower engagement, inflated amounts, more promotions, more
            new users: what the demo's second round and drift monitoring should notice).
        dated_snapshots: True writes monthly snapshot history with ``SNAPSHOT_DATE``; False writes only the
            snapshot at D in the original shape (its lagged columns are then unusable for training).

    Returns:
        A summary: rows per file, payments per user, positive rate, oracle AUC, seconds.
    """
    from kpi.storage import join

    if users < 1:
        raise ValueError(f"--users must be at least 1, got {users}")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {sorted(SCENARIOS)}")
    knobs = SCENARIOS[scenario]
    started = time.perf_counter()
    start = as_of - dt.timedelta(days=HISTORY_DAYS)
    snap_cols = [SNAPSHOT_DATE] if dated_snapshots else []
    columns = {
        k: SOURCE_COLUMNS[k] + (snap_cols if k in ("active_user", "dinero_cuenta", "marketplace") else [])
        for k in SOURCE_FILES
    }
    columns["outcomes"] = [ID, "p_true", "active_next_60d"]
    names = {**SOURCE_FILES, "outcomes": OUTCOMES_FILE}
    sinks = {k: _CsvSink(join(out, names[k]), columns[k], settings) for k in names}
    n_chunks = (users + CHUNK_USERS - 1) // CHUNK_USERS
    children = np.random.SeedSequence([seed, list(SCENARIOS).index(scenario)]).spawn(n_chunks)
    p_all, y_all = [], []
    try:
        for c in range(n_chunks):
            lo, hi = c * CHUNK_USERS, min(users, (c + 1) * CHUNK_USERS)
            ids = ID_BASE + np.arange(lo, hi, dtype="int64")
            chunk = simulate_chunk(np.random.default_rng(children[c]), ids, knobs)
            for name, table in _tables(chunk, start, dated_snapshots).items():
                sinks[name].write(table)
            p_all.append(chunk["p_true"])
            y_all.append(chunk["realised"])
    finally:
        for sink in sinks.values():
            sink.close()
    p = np.concatenate(p_all)
    y = np.concatenate(y_all)
    seconds = time.perf_counter() - started
    return {
        "out": out,
        "users": users,
        "as_of": as_of.isoformat(),
        "seed": seed,
        "scenario": scenario,
        "dated_snapshots": dated_snapshots,
        "history": [start.isoformat(), (as_of - dt.timedelta(days=1)).isoformat()],
        "rows": {names[k]: s.rows for k, s in sinks.items()},
        "payments_per_user": round(sinks["payments"].rows / users, 2),
        "positive_rate": round(float(y.mean()), 4),
        "mean_p_true": round(float(p.mean()), 4),
        "oracle_auc": round(roc_auc(y, p), 4),
        "seconds": round(seconds, 2),
    }
