"""Ingest into raw with COPY: seed data as received, case-insensitive headers, nothing dropped, re-ingest detected."""

from __future__ import annotations

import datetime as dt

import pytest
from kpi.db import connect

from tests.conftest import reference_file
from tests.crypto.conftest import query, write_extract


def test_seed_file_lands_in_raw_exactly_as_received(crypto_env):
    from kpi.crypto.ingest import ingest_file

    seed = reference_file("seed-data", "BT_CRYPTO_TRANSACTION_HISTORY.csv")
    result = ingest_file(str(seed), settings=crypto_env)
    lines = seed.read_text().splitlines()
    assert result["rows"] == len(lines) - 1 and result["malformed_rows"] == 0
    # no date in the name: the ingest date (never the rows' dates)
    assert result["extract_date"] == dt.datetime.now(dt.UTC).date() and result["extract_date_source"] == "ingest_date"
    rows = query(crypto_env.database_url,
                 "SELECT line_no, site_id, user_id, purchase_date, crypto_type, purchase_price, purchase_units,"
                 " b.source, batch_id FROM raw.bt_crypto_transaction_history JOIN raw.crypto_ingest_batches b"
                 " USING (batch_id) ORDER BY line_no")
    assert [r[0] for r in rows] == list(range(2, len(lines) + 1))
    assert [",".join(r[1:7]) for r in rows] == lines[1:]
    assert {r[7] for r in rows} == {str(seed)} and {r[8] for r in rows} == {result["batch_id"]}


def test_reingesting_the_same_bytes_is_detected_and_adds_nothing_unless_forced(crypto_env):
    from kpi.crypto.ingest import ingest_file

    seed = str(reference_file("seed-data", "BT_CRYPTO_TRANSACTION_HISTORY.csv"))
    first = ingest_file(seed, settings=crypto_env)
    again = ingest_file(seed, settings=crypto_env)
    assert again["batch_id"] is None and again["duplicate_of"] == first["batch_id"] and again["rows"] == 0
    assert query(crypto_env.database_url, "SELECT count(*) FROM raw.bt_crypto_transaction_history")[0][0] == 12
    forced = ingest_file(seed, settings=crypto_env, force=True)
    assert forced["duplicate_of"] == first["batch_id"] and forced["rows"] == 12
    assert query(crypto_env.database_url, "SELECT count(*) FROM raw.bt_crypto_transaction_history")[0][0] == 24


def test_headers_any_case_any_order_and_malformed_lines_kept_whole(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file

    path = tmp_path / "extract_2026-01-05.csv"
    path.write_text("purchase_units,Crypto_Type,site_id,USER_ID,purchase_date,Purchase_Price\r\n"
                    "0.5,BTC,ARGENTINA,7,5/1/2026,20000\r\n"
                    "ARGENTINA,8,5/1/2026\r\n"
                    "\r\n"
                    "1,ETH,BRASIL,9,5/1/2026,3000,oops\r\n")
    result = ingest_file(str(path), settings=crypto_env)
    assert result["rows"] == 3 and result["malformed_rows"] == 2 and result["extract_date"] == dt.date(2026, 1, 5)
    rows = query(crypto_env.database_url, "SELECT line_no, site_id, user_id, purchase_date, crypto_type,"
                 " purchase_price, purchase_units, raw_line FROM raw.bt_crypto_transaction_history ORDER BY line_no")
    assert rows == [
        (2, "ARGENTINA", "7", "5/1/2026", "BTC", "20000", "0.5", None),
        (3, None, None, None, None, None, None, "ARGENTINA,8,5/1/2026"),
        (5, None, None, None, None, None, None, "1,ETH,BRASIL,9,5/1/2026,3000,oops"),
    ]


def test_a_file_without_a_required_column_is_refused_and_writes_nothing(crypto_env, tmp_path):
    from kpi.crypto.ingest import IngestError, ingest_file

    path = tmp_path / "bad_2026-01-05.csv"
    path.write_text("SITE_ID,USER_ID,PURCHASE_DATE,CRYPTO_TYPE,PRICE,PURCHASE_UNITS\nARGENTINA,1,5/1/2026,BTC,1,1\n")
    with pytest.raises(IngestError, match="PURCHASE_PRICE"):
        ingest_file(str(path), settings=crypto_env)
    assert query(crypto_env.database_url, "SELECT count(*) FROM raw.crypto_ingest_batches")[0][0] == 0


def test_ingest_streams_from_object_storage(crypto_env, s3_server, monkeypatch):
    from kpi.crypto.ingest import ingest_file
    from kpi.settings import reload_settings
    from kpi.storage import write_bytes

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    settings = reload_settings()
    seed = reference_file("seed-data", "BT_CRYPTO_TRANSACTION_HISTORY.csv")
    url = "s3://kpi/crypto/source/BT_CRYPTO_TRANSACTION_HISTORY_2023-02-01.csv"
    write_bytes(url, seed.read_bytes(), settings)
    result = ingest_file(url, settings=settings)
    assert result["rows"] == 12 and result["extract_date"] == dt.date(2023, 2, 1)
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*), min(b.source) FROM raw.bt_crypto_transaction_history"
                            " JOIN raw.crypto_ingest_batches b USING (batch_id)").fetchone() == (12, url)


def _batch_sequence(url: str) -> int:
    return query(url, "SELECT last_value FROM raw.crypto_ingest_batches_batch_id_seq")[0][0]


def test_a_duplicate_is_detected_before_anything_is_copied(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file

    path = write_extract(tmp_path, dt.date(2026, 1, 5), [f"CHILE,{u},5/1/2026,BTC,1,1" for u in range(1, 2001)])
    first = ingest_file(str(path), settings=crypto_env)
    allocated = _batch_sequence(crypto_env.database_url)
    again = ingest_file(str(path), settings=crypto_env)
    assert again["duplicate_of"] == first["batch_id"] and again["batch_id"] is None
    # no batch was even opened (the old ingest copied every row, then rolled back)
    assert _batch_sequence(crypto_env.database_url) == allocated


def test_two_ingests_of_the_same_bytes_at_once_keep_one_copy(crypto_env, tmp_path):
    import threading

    from kpi.crypto.ingest import ingest_file

    path = write_extract(tmp_path, dt.date(2026, 1, 5), [f"CHILE,{u},5/1/2026,BTC,1,1" for u in range(1, 501)])
    # hold both ingests until both have passed their "was this content ingested?" check (a lock that stops
    # every insert of a batch), then let them race
    blocker = connect(crypto_env.database_url)
    blocker.execute("LOCK TABLE raw.crypto_ingest_batches IN SHARE MODE")
    results: list = []

    def ingest() -> None:
        results.append(ingest_file(str(path), settings=crypto_env))

    threads = [threading.Thread(target=ingest) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = __import__("time").monotonic() + 60
        while len(query(crypto_env.database_url, "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE '%%crypto_%%'")) < 2:
            assert __import__("time").monotonic() < deadline, "the two ingests never both waited"
            __import__("time").sleep(0.05)
    finally:
        blocker.rollback()
        blocker.close()
    for thread in threads:
        thread.join(60)
    assert sorted(r["batch_id"] is None for r in results) == [False, True]
    winner = next(r for r in results if r["batch_id"] is not None)
    loser = next(r for r in results if r["batch_id"] is None)
    assert loser["duplicate_of"] == winner["batch_id"]
    assert query(crypto_env.database_url, "SELECT count(*) FROM raw.crypto_ingest_batches")[0][0] == 1
    assert query(crypto_env.database_url, "SELECT count(*) FROM raw.bt_crypto_transaction_history")[0][0] == 500


def test_a_header_with_a_repeated_column_is_refused_naming_it(crypto_env, tmp_path):
    from kpi.crypto.ingest import IngestError, ingest_file

    path = tmp_path / "dup_2026-01-05.csv"
    path.write_text("SITE_ID,USER_ID,PURCHASE_DATE,CRYPTO_TYPE,PURCHASE_PRICE,PURCHASE_UNITS,purchase_price\n"
                    "CHILE,1,5/1/2026,BTC,1,1,2\n")
    with pytest.raises(IngestError, match="'purchase_price' twice .columns 5 and 7."):
        ingest_file(str(path), settings=crypto_env)
    assert query(crypto_env.database_url, "SELECT count(*) FROM raw.crypto_ingest_batches")[0][0] == 0


def test_a_folder_ingest_loads_every_good_file_and_names_each_bad_one(crypto_env, tmp_path):
    import json
    import os
    import subprocess
    import sys

    folder = tmp_path / "drop"
    write_extract(folder, dt.date(2026, 1, 5), ["CHILE,1,5/1/2026,BTC,1,1"])
    write_extract(folder, dt.date(2026, 1, 7), ["CHILE,2,7/1/2026,BTC,1,1"])
    (folder / "BT_CRYPTO_TRANSACTION_HISTORY_2026-01-06.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (folder / "BT_CRYPTO_TRANSACTION_HISTORY_2026-01-06b.csv").write_text("SITE,USER\nCHILE,3\n")
    res = subprocess.run([sys.executable, "-m", "kpi.cli", "crypto", "ingest", str(folder)], capture_output=True,
                         text=True, env=dict(os.environ), timeout=300, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and len(summary.get("files", [])) == 2 and summary["rows"] == 2
    failed = {f["source"].rsplit("/", 1)[1]: f["error"] for f in summary["failed"]}
    assert set(failed) == {"BT_CRYPTO_TRANSACTION_HISTORY_2026-01-06.csv", "BT_CRYPTO_TRANSACTION_HISTORY_2026-01-06b.csv"}
    assert "binary" in failed["BT_CRYPTO_TRANSACTION_HISTORY_2026-01-06.csv"]
    assert "lacks column(s)" in failed["BT_CRYPTO_TRANSACTION_HISTORY_2026-01-06b.csv"]
    assert all(name in summary["error"] for name in failed)
    assert query(crypto_env.database_url, "SELECT count(*) FROM raw.bt_crypto_transaction_history")[0][0] == 2


def test_an_ingest_committing_while_a_stage_reads_is_not_half_seen(crypto_env, tmp_path, monkeypatch):
    from kpi.crypto import queries
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window

    day = dt.date(2026, 1, 5)
    ingest_file(str(write_extract(tmp_path / "a", day, [f"CHILE,{u},5/1/2026,BTC,1,1" for u in range(1, 51)])),
                settings=crypto_env)
    late = write_extract(tmp_path / "b", day, [f"CHILE,{u},5/1/2026,BTC,2,1" for u in range(1, 61)])
    real_sql = queries.sql
    landed: list[dict] = []

    def sql_with_an_ingest_in_between(name, settings=None):
        if name == "stage_window" and not landed:  # after the stage counted the window, before it reads it
            landed.append(ingest_file(str(late), settings=crypto_env))
        return real_sql(name, settings)

    monkeypatch.setattr("kpi.crypto.steps.sql", sql_with_an_ingest_in_between)
    summary = run_window(day, settings=crypto_env)
    assert landed and landed[0]["rows"] == 60  # the ingest committed in the middle of the stage
    assert summary["status"] == "published" and summary["raw_rows"] == 50 and summary["inserted"] == 50
    monkeypatch.undo()
    assert run_window(day, settings=crypto_env)["updated"] == 50  # the next run sees the new extract


TRICKY_VALUES = {
    "user_id": ["7", "007", "123456789012345678", "1234567890123456789", "-5", "1.0", " 5", "5 ", "", "x1", "٣",
                "²", "1e3", "+4"],
    "purchase_date": ["1/1/2026", "01/01/2026", "31/1/2026", "31/2/2026", "29/2/2024", "29/2/2023", "1/13/2026",
                      "0/1/2026", "1/1/999", "1/1/0999", "15/6/2005", "1/1/2999", "2026-01-01", "1/1/26", "",
                      " 1/1/2026", "1/1/2026 ", "١/١/٢٠٢٦", "123/1/2026"],
    "purchase_price": ["1", "1.5", "0.000000001", "100.10", "1.", ".5", "-1", "-0.5", "1e3", "NaN", "1,5", " 1",
                       "", "+1", "1.2.3", "00001.5000", "9" * 20, "9" * 21, "1." + "0" * 20, "1." + "1" * 21,
                       "٣.٥", "0"],
}


def test_the_ingest_types_values_as_the_rule_list_s_sql_would(crypto_env, tmp_path):
    """The typed columns the ingest writes (fast path and careful path) equal the SQL definitions of the rule
    list, recomputed by Postgres from the text raw kept."""
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.rules import NUMBER_RE, USER_ID_MAX_DIGITS, USER_ID_RE

    lines = []
    for user in TRICKY_VALUES["user_id"]:
        lines.append(f"CHILE,{user},1/1/2026,BTC,1,1")
    for date in TRICKY_VALUES["purchase_date"]:
        lines.append(f"CHILE,1,{date},BTC,1,1")
    for number in TRICKY_VALUES["purchase_price"]:
        lines.append(f"CHILE,1,1/1/2026,BTC,{number},{number}")
        lines.append(f'"CHILE",1,1/1/2026,BTC,{number},{number}')  # the same values through csv (the careful path)
    result = ingest_file(str(write_extract(tmp_path, dt.date(2026, 1, 5), lines)), settings=crypto_env)
    assert result["malformed_rows"] == 2  # the two "1,5" lines have seven fields
    mismatches = query(crypto_env.database_url, f"""
        SELECT line_no, user_id, purchase_date, purchase_price, purchase_units
        FROM raw.bt_crypto_transaction_history
        WHERE raw_line IS NULL AND (
              user_id_bigint IS DISTINCT FROM (CASE WHEN user_id ~ '{USER_ID_RE}'
                                                    AND length(user_id) <= {USER_ID_MAX_DIGITS} THEN user_id::bigint END)
           OR purchase_date_parsed IS DISTINCT FROM raw.parse_dmy(purchase_date)
           OR purchase_date_is_real IS DISTINCT FROM (CASE WHEN purchase_date ~ '^[0-9]{{1,2}}/[0-9]{{1,2}}/[0-9]{{4}}$'
                                                           THEN raw.parse_dmy(purchase_date) IS NOT NULL END)
           OR (purchase_price_numeric IS NULL) <> (purchase_price !~ '{NUMBER_RE}')
           OR (purchase_price ~ '^-?[0-9]{{1,20}}(\\.[0-9]{{1,20}})?$' AND (
                  purchase_price_numeric IS DISTINCT FROM purchase_price::numeric
               OR purchase_price_scale IS DISTINCT FROM scale(trim_scale(purchase_price::numeric))
               OR purchase_value_exact IS DISTINCT FROM purchase_price::numeric * purchase_units::numeric))
           OR (purchase_price ~ '{NUMBER_RE}' AND purchase_price_scale IS DISTINCT FROM
                  length(rtrim(split_part(purchase_price, '.', 2), '0'))))
        ORDER BY line_no""")
    assert mismatches == []
    # longer numbers get stand-ins that break the same rules
    stand_ins = dict(query(crypto_env.database_url, "SELECT purchase_price, purchase_price_numeric"
                           " FROM raw.bt_crypto_transaction_history WHERE length(purchase_price) > 20"))
    assert stand_ins["9" * 21] == 10**20 and stand_ins["1." + "1" * 21] < 2
