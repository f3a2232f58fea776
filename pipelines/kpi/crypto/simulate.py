"""Play the upstream system: daily extracts of crypto purchases with later updates, deletions and anomalies.

Model (the contract the pipeline relies on): the extract of day ``d`` carries the *complete current
state* of every purchase day it contains: day ``d`` itself and every earlier day of the window that
changed on ``d`` (an update, a deletion or a restore of one of its rows). A key missing from the
latest extract of its day was deleted at the source. Anomalies are a property of a transaction, so a
re-sent day repeats them. Everything is vectorised (numpy / pandas) and deterministic per seed.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

HEADER = "SITE_ID,USER_ID,PURCHASE_DATE,CRYPTO_TYPE,PURCHASE_PRICE,PURCHASE_UNITS"
SITES = ("ARGENTINA", "BRASIL", "MEXICO", "CHILE", "COLOMBIA", "URUGUAY")
SITE_WEIGHTS = (0.3, 0.3, 0.2, 0.08, 0.08, 0.04)
CRYPTOS = ("BTC", "ETH", "USDT", "USDC", "SOL", "ADA")
CRYPTO_WEIGHTS = (0.35, 0.25, 0.15, 0.1, 0.1, 0.05)
BASE_PRICE = {"BTC": 60000.0, "ETH": 3000.0, "USDT": 1.0, "USDC": 1.0, "SOL": 150.0, "ADA": 0.5}

#: Every anomaly the simulator injects and the reason (or outcome) the pipeline must give it.
ANOMALIES: dict[str, str] = {
    "site_missing": "site_id_missing",
    "site_unknown": "site_id_unknown",
    "site_lower_case": "site_id_not_canonical",
    "site_with_spaces": "site_id_not_canonical",
    "user_missing": "user_id_missing",
    "user_not_integer": "user_id_not_integer",
    "user_with_decimals": "user_id_not_integer",
    "date_missing": "purchase_date_missing",
    "date_iso_format": "purchase_date_bad_format",
    "date_impossible_day": "purchase_date_impossible",
    "date_month_13": "purchase_date_impossible",
    "date_in_future": "purchase_date_after_extract",
    "date_before_bitcoin": "purchase_date_too_early",
    "crypto_missing": "crypto_type_missing",
    "crypto_unknown": "crypto_type_unknown",
    "crypto_lower_case": "crypto_type_not_canonical",
    "crypto_with_spaces": "crypto_type_not_canonical",
    "price_missing": "purchase_price_missing",
    "price_not_numeric": "purchase_price_not_numeric",
    "price_decimal_comma": "purchase_price_not_numeric",
    "price_negative": "purchase_price_negative",
    "price_float_noise": "purchase_price_too_precise",
    "price_too_large": "purchase_price_too_large",
    "units_missing": "purchase_units_missing",
    "units_not_numeric": "purchase_units_not_numeric",
    "units_scientific": "purchase_units_not_numeric",
    "units_zero": "purchase_units_not_positive",
    "units_negative": "purchase_units_not_positive",
    "value_too_large": "purchase_value_out_of_range",
    "too_few_columns": "column_count_mismatch",
    "too_many_columns": "column_count_mismatch",
    "conflicting_duplicate": "superseded",
    "exact_duplicate": "superseded",
}
ANOMALY_KINDS = tuple(ANOMALIES)


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def generate_transactions(start: dt.date, end: dt.date, rows_per_day: int, anomaly_rate: float, seed: int,
                          update_rate: float = 0.02, delete_rate: float = 0.01, restore_share: float = 0.3,
                          window_days: int = 5):
    """All transactions of the period with their later events, as a pandas DataFrame (one row each)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    days = _days(start, end)
    n = rows_per_day * len(days)
    day = np.repeat(np.arange(len(days)), rows_per_day)
    site = rng.choice(len(SITES), size=n, p=SITE_WEIGHTS)
    # users live in a per-site id range, so a key collision is rare (and removed below)
    user = (site + 1) * 1_000_000 + rng.integers(0, 999_999, size=n)
    crypto = rng.choice(len(CRYPTOS), size=n, p=CRYPTO_WEIGHTS)
    base = np.array([BASE_PRICE[c] for c in CRYPTOS])[crypto]
    price = np.round(base * rng.lognormal(0.0, 0.05, size=n), 2)
    units = np.round(rng.lognormal(0.0, 1.0, size=n) * (100.0 / np.sqrt(base)), 4) + 0.0001
    tx = pd.DataFrame({"day": day, "site": site, "user": user, "crypto": crypto, "price": price, "units": units})
    tx = tx.drop_duplicates(["day", "site", "user", "crypto"]).reset_index(drop=True)
    n = len(tx)
    never = np.int64(10**6)
    later = rng.integers(1, max(window_days, 2), size=n)
    tx["upd_day"] = np.where(rng.random(n) < update_rate, tx["day"] + later, never)
    tx["upd_price"] = np.round(tx["price"] * rng.uniform(0.9, 1.1, size=n), 2)
    tx["upd_units"] = np.round(tx["units"] * rng.uniform(0.5, 1.5, size=n), 4) + 0.0001
    deleted = rng.random(n) < delete_rate
    del_after = rng.integers(1, max(window_days - 1, 2), size=n)
    tx["del_day"] = np.where(deleted, tx["day"] + del_after, never)
    restored = deleted & (rng.random(n) < restore_share) & (del_after + 1 < window_days)
    tx["restore_day"] = np.where(restored, tx["del_day"] + 1, never)
    anomalous = rng.random(n) < anomaly_rate
    tx["anomaly"] = np.where(anomalous, rng.integers(0, len(ANOMALY_KINDS), size=n), -1)
    return tx, days


def _render(state, days: list[dt.date], extract_day: int) -> str:
    """CSV text of the given transactions as the source would send them (anomalies applied)."""
    import pandas as pd

    day_text = np.array([f"{d.day}/{d.month}/{d.year}" for d in days], dtype=object)
    site = pd.Series(np.array(SITES, dtype=object)[state["site"].to_numpy()], index=state.index)
    crypto = pd.Series(np.array(CRYPTOS, dtype=object)[state["crypto"].to_numpy()], index=state.index)
    user = state["user"].astype(str)
    date = pd.Series(day_text[state["day"].to_numpy()], index=state.index)
    price = state["cur_price"].map("{:.2f}".format)
    units = state["cur_units"].map("{:.4f}".format)
    kind = state["anomaly"].to_numpy()

    def where(name: str):
        return kind == ANOMALY_KINDS.index(name)

    site[where("site_missing")] = ""
    site[where("site_unknown")] = "PERU"
    site[where("site_lower_case")] = site[where("site_lower_case")].str.lower()
    site[where("site_with_spaces")] = " " + site[where("site_with_spaces")] + " "
    user[where("user_missing")] = ""
    user[where("user_not_integer")] = "U" + user[where("user_not_integer")]
    user[where("user_with_decimals")] = user[where("user_with_decimals")] + ".0"
    date[where("date_missing")] = ""
    iso = state["day"].map(lambda i: days[i].isoformat())
    date[where("date_iso_format")] = iso[where("date_iso_format")]
    year = state["day"].map(lambda i: str(days[i].year))
    date[where("date_impossible_day")] = "31/2/" + year[where("date_impossible_day")]
    date[where("date_month_13")] = "12/13/" + year[where("date_month_13")]
    future = days[extract_day] + dt.timedelta(days=400)
    date[where("date_in_future")] = f"{future.day}/{future.month}/{future.year}"
    date[where("date_before_bitcoin")] = "15/6/2005"
    crypto[where("crypto_missing")] = ""
    crypto[where("crypto_unknown")] = "DOGEX"
    crypto[where("crypto_lower_case")] = crypto[where("crypto_lower_case")].str.lower()
    crypto[where("crypto_with_spaces")] = crypto[where("crypto_with_spaces")] + " "
    price[where("price_missing")] = ""
    price[where("price_not_numeric")] = "N/A"
    price[where("price_decimal_comma")] = '"' + price[where("price_decimal_comma")].str.replace(".", ",") + '"'
    price[where("price_negative")] = "-" + price[where("price_negative")]
    price[where("price_float_noise")] = price[where("price_float_noise")] + "000000001"
    price[where("price_too_large")] = "5000000000000000"
    units[where("units_missing")] = ""
    units[where("units_not_numeric")] = "two"
    units[where("units_scientific")] = "1e-3"
    units[where("units_zero")] = "0"
    units[where("units_negative")] = "-" + units[where("units_negative")]
    price[where("value_too_large")] = "900000000000000"
    units[where("value_too_large")] = "100000"
    line = site + "," + user + "," + date + "," + crypto + "," + price + "," + units
    line[where("too_few_columns")] = (site + "," + user + "," + date + "," + crypto + "," + price)[
        where("too_few_columns")]
    line[where("too_many_columns")] = line[where("too_many_columns")] + ",EXTRA"
    # duplicates follow their original, so the duplicate is the latest line and wins
    conflicting = line[where("conflicting_duplicate")]
    conflict_price = (state["cur_price"][where("conflicting_duplicate")] + 1).map("{:.2f}".format)
    conflict_line = (site + "," + user + "," + date + "," + crypto + ",")[where("conflicting_duplicate")] + \
        conflict_price + "," + units[where("conflicting_duplicate")]
    order = pd.concat([
        pd.DataFrame({"pos": np.arange(len(line)), "sub": 0, "line": line.to_numpy()}),
        pd.DataFrame({"pos": np.flatnonzero(where("conflicting_duplicate")), "sub": 1,
                      "line": conflict_line.to_numpy()}),
        pd.DataFrame({"pos": np.flatnonzero(where("exact_duplicate")), "sub": 1,
                      "line": line[where("exact_duplicate")].to_numpy()}),
    ]).sort_values(["pos", "sub"], kind="stable")
    del conflicting
    return HEADER + "\n" + "\n".join(order["line"].tolist()) + "\n"


def simulate_extracts(start: dt.date, end: dt.date, out: str, rows_per_day: int = 1000, anomaly_rate: float = 0.02,
                      seed: int = 7, update_rate: float = 0.02, delete_rate: float = 0.01,
                      window_days: int = 5, settings=None) -> dict:
    """Write one extract per day, ``<out>/BT_CRYPTO_TRANSACTION_HISTORY_<YYYY-MM-DD>.csv``.

    Args:
        start, end: first and last extract day (inclusive).
        out: folder path or URL (``file://``, ``s3://``).
        rows_per_day: new transactions per day.
        anomaly_rate: share of transactions carrying one anomaly (kinds: :data:`ANOMALIES`).
        seed: the same seed gives the same bytes.
        update_rate, delete_rate: share of transactions changed / deleted within the following days.
        window_days: how many days back the source still corrects (the pipeline's window).
        settings: settings (storage options).

    Returns:
        Per-day counts and the written files.
    """
    from kpi.storage import join, write_text

    if rows_per_day < 1:
        raise ValueError("--rows-per-day must be at least 1")
    if not 0 <= anomaly_rate <= 1:
        raise ValueError("--anomaly-rate must be between 0 and 1")
    tx, days = generate_transactions(start, end, rows_per_day, anomaly_rate, seed, update_rate, delete_rate,
                                     window_days=window_days)
    files, per_day = [], []
    for d in range(len(days)):
        touched = set(tx.loc[(tx["upd_day"] == d) | (tx["del_day"] == d) | (tx["restore_day"] == d), "day"])
        resent = sorted({d} | {p for p in touched if p >= d - (window_days - 1)})
        state = tx[tx["day"].isin(resent)]
        alive = ~((state["del_day"] <= d) & (state["restore_day"] > d))
        state = state[alive].copy()
        updated = state["upd_day"] <= d
        state["cur_price"] = np.where(updated, state["upd_price"], state["price"])
        state["cur_units"] = np.where(updated, state["upd_units"], state["units"])
        text = _render(state, days, d)
        url = join(out, f"BT_CRYPTO_TRANSACTION_HISTORY_{days[d].isoformat()}.csv")
        write_text(url, text, settings)
        files.append(url)
        per_day.append({"extract_date": days[d].isoformat(), "days_sent": len(resent),
                        "lines": text.count("\n") - 1,
                        "updates": int((tx["upd_day"] == d).sum()), "deletions": int((tx["del_day"] == d).sum()),
                        "restores": int((tx["restore_day"] == d).sum())})
    kinds = tx.loc[tx["anomaly"] >= 0, "anomaly"].map(lambda i: ANOMALY_KINDS[i]).value_counts()
    return {"files": files, "days": per_day, "transactions": len(tx),
            "anomalous_transactions": int((tx["anomaly"] >= 0).sum()),
            "anomaly_kinds": {k: int(v) for k, v in kinds.sort_index().items()}}
