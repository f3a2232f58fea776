"""Extracts out of order and files that are not what they seem: which extract is a day's current one.

Real Postgres, real files: a late older extract, a forced re-ingest, a corrections file carrying a malformed
row, an undated file with a typo year, and rows too hostile for Postgres' types.
"""

from __future__ import annotations

import datetime as dt

from tests.crypto.conftest import dmy, query, write_extract

D = dt.date(2026, 4, 10)


def _day(n: int) -> dt.date:
    return D + dt.timedelta(days=n)


def _prod(url: str) -> dict[int, tuple[float, bool]]:
    return {u: (float(p), a) for u, p, a in query(url, "SELECT user_id, purchase_price, is_active"
                                                         " FROM prod.bt_crypto_events")}


def test_a_late_older_extract_and_a_forced_old_file_never_become_current(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window

    d = dmy(D)
    # the extract of D+2 re-sends day D with new prices and a key (user 9) the older extract does not have
    newer = write_extract(tmp_path / "new", _day(2), [f"CHILE,{u},{d},ETH,200,1" for u in range(1, 10)])
    older = write_extract(tmp_path / "old", _day(1), [f"CHILE,{u},{d},ETH,100,1" for u in range(1, 9)])
    ingest_file(str(newer), settings=crypto_env)
    ingest_file(str(older), settings=crypto_env)  # arrives late: ingested after the newer one
    first = run_window(_day(2), settings=crypto_env)
    assert first["status"] == "published"
    assert _prod(crypto_env.database_url) == {u: (200.0, True) for u in range(1, 10)}
    # re-ingesting the old file on purpose adds a copy; it is still an older extract
    forced = ingest_file(str(older), settings=crypto_env, force=True)
    assert forced["forced"] is True and forced["duplicate_of"] is not None and forced["rows"] == 8
    again = run_window(_day(2), settings=crypto_env)
    assert (again["updated"], again["deactivated"], again["inserted"]) == (0, 0, 0)
    assert _prod(crypto_env.database_url) == {u: (200.0, True) for u in range(1, 10)}
    assert again["superseded"] == 16  # both copies of the older extract


def test_a_corrections_file_with_a_malformed_row_does_not_take_over_its_extract_day(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window

    d4, d5 = dmy(_day(4)), dmy(_day(5))
    ingest_file(str(write_extract(tmp_path / "a", _day(4), [f"BRASIL,{u},{d4},BTC,10,1" for u in range(1, 101)])),
                settings=crypto_env)
    ingest_file(str(write_extract(tmp_path / "b", _day(5), [f"BRASIL,{u},{d5},BTC,50,1" for u in range(1, 101)])),
                settings=crypto_env)
    assert run_window(_day(5), settings=crypto_env)["inserted"] == 200
    # corrected rows of day 4, plus a line without a usable date, sent as the extract of day 5
    corrections = [f"BRASIL,{u},{d4},BTC,11,1" for u in range(1, 101)] + ["BRASIL,7,,BTC,1,1"]
    path = tmp_path / "c" / f"CORRECTIONS_{_day(5).isoformat()}.csv"
    path.parent.mkdir()
    path.write_text("SITE_ID,USER_ID,PURCHASE_DATE,CRYPTO_TYPE,PURCHASE_PRICE,PURCHASE_UNITS\n"
                    + "\n".join(corrections) + "\n")
    ingest_file(str(path), settings=crypto_env)
    run = run_window(_day(5), settings=crypto_env)
    assert run["status"] == "published" and run["updated"] == 100 and run["deactivated"] == 0
    prices = dict(query(crypto_env.database_url, "SELECT purchase_date, array_agg(DISTINCT purchase_price::int)"
                                                 " FROM prod.bt_crypto_events WHERE is_active GROUP BY 1"))
    assert prices == {_day(4): [11], _day(5): [50]}  # day 5 untouched: its 100 rows are all still active
    reject = query(crypto_env.database_url, "SELECT reason, logical_date FROM dqm.bt_crypto_events_rejects")
    assert reject == [("purchase_date_missing", _day(5))]  # quarantined against the file's extract day


def test_the_extract_date_never_comes_from_the_rows(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file

    undated = tmp_path / "BT_CRYPTO_TRANSACTION_HISTORY.csv"
    undated.write_text("SITE_ID,USER_ID,PURCHASE_DATE,CRYPTO_TYPE,PURCHASE_PRICE,PURCHASE_UNITS\n"
                       f"MEXICO,1,{dmy(D)},BTC,1,1\nMEXICO,2,1/1/2999,BTC,1,1\n")
    today = dt.datetime.now(dt.UTC).date()
    result = ingest_file(str(undated), settings=crypto_env)
    assert result["extract_date"] == today and result["extract_date_source"] == "ingest_date"
    # the typo year belongs to the file's extract day, where it is rejected (validated and counted)
    days = query(crypto_env.database_url, "SELECT window_date, dated_rows, undated_rows FROM raw.crypto_batch_days"
                 " ORDER BY 1")
    assert days == sorted([(D, 1, 0), (today, 0, 1)])
    named = write_extract(tmp_path / "named", _day(1), [f"MEXICO,3,{dmy(D)},BTC,1,1"])
    assert ingest_file(str(named), settings=crypto_env)["extract_date"] == _day(1)
    again = ingest_file(str(named), settings=crypto_env, force=True, extract_date=_day(3))
    assert (again["extract_date"], again["extract_date_source"]) == (_day(3), "option")


def test_an_unmatched_quote_costs_its_own_line_only(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window

    d = dmy(D)
    lines = [f"URUGUAY,{u},{d},SOL,5,1" for u in range(1, 251)]
    lines.insert(50, f'URUGUAY,999,{d},"SOL,5,1')  # the quote never closes
    result = ingest_file(str(write_extract(tmp_path, D, lines)), settings=crypto_env)
    assert result["rows"] == 251 and result["malformed_rows"] == 1
    summary = run_window(D, settings=crypto_env)
    assert (summary["raw_rows"], summary["published"], summary["quarantined"]) == (251, 250, 1)
    bad = query(crypto_env.database_url, "SELECT line_no, reason, raw_line FROM dqm.bt_crypto_events_rejects")
    assert bad == [(52, "column_count_mismatch", f'URUGUAY,999,{d},"SOL,5,1')]


def test_hostile_rows_are_kept_as_text_and_rejected_while_the_file_loads(crypto_env, tmp_path, monkeypatch):
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window

    d = dmy(D)
    hostile = {
        "huge_field": (f"{'A' * 5_000_000},1,{d},BTC,1,1", "site_id_unknown"),
        "huge_quoted_field": (f'ARGENTINA,2,{d},"{"B" * 300_000}",1,1', "crypto_type_unknown"),
        "price_20000_decimals": (f"ARGENTINA,3,{d},BTC,1.{'1' * 20_000},1", "purchase_price_too_precise"),
        "units_70000_digits": (f"ARGENTINA,4,{d},BTC,1,{'9' * 70_000}", "purchase_units_too_large"),
        "price_and_units_huge": (f"ARGENTINA,5,{d},BTC,{'9' * 40_000},{'9' * 40_000}", "purchase_price_too_large"),
        "negative_huge": (f"ARGENTINA,6,{d},BTC,-{'9' * 30},1", "purchase_price_negative"),
        "nul_byte": (f"ARGENTINA,7,{d},BTC\x00,1,1", "crypto_type_not_canonical"),
    }
    good = [f"ARGENTINA,{u},{d},BTC,2,1" for u in range(100, 120)]
    padded = f"ARGENTINA,8,{d},BTC,{'0' * 30}1.{'0' * 30},1"  # 1, written very long: valid
    lines = good + [line for line, _ in hostile.values()] + [padded]
    path = write_extract(tmp_path, D, lines)
    with path.open("ab") as fh:
        fh.write(f"ARGENTINA,9,{d},BTC,1,1\xff\n".encode("latin-1"))  # not UTF-8: kept as \\xff, rejected
    result = ingest_file(str(path), settings=crypto_env)
    assert result["rows"] == len(lines) + 1 and result["malformed_rows"] == 0
    monkeypatch.setenv("KPI_CRYPTO_REJECT_THRESHOLD", "1")
    from kpi.settings import reload_settings

    summary = run_window(D, settings=reload_settings())
    assert summary["published"] == len(good) + 1 and summary["quarantined"] == 8
    reasons = dict(query(crypto_env.database_url, "SELECT user_id, reason FROM dqm.bt_crypto_events_rejects"))
    expected = {str(i + 1): reason for i, (_, reason) in enumerate(hostile.values())}
    assert reasons == {**expected, "9": "purchase_units_not_numeric"}
    kept = query(crypto_env.database_url, "SELECT length(site_id), length(purchase_units) FROM"
                 " raw.bt_crypto_transaction_history WHERE user_id IN ('1', '4') ORDER BY user_id")
    assert kept == [(5_000_000, 1), (9, 70_000)]  # kept whole, as text
    value = query(crypto_env.database_url, "SELECT purchase_price FROM prod.bt_crypto_events WHERE user_id = 8")
    assert float(value[0][0]) == 1.0
