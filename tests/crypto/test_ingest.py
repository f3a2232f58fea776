"""Ingest into raw with COPY: seed data as received, case-insensitive headers, nothing dropped, re-ingest detected."""

from __future__ import annotations

import datetime as dt

import pytest
from kpi.db import connect

from tests.conftest import reference_file
from tests.crypto.conftest import query


def test_seed_file_lands_in_raw_exactly_as_received(crypto_env):
    from kpi.crypto.ingest import ingest_file

    seed = reference_file("seed-data", "BT_CRYPTO_TRANSACTION_HISTORY.csv")
    result = ingest_file(str(seed), settings=crypto_env)
    lines = seed.read_text().splitlines()
    assert result["rows"] == len(lines) - 1 and result["malformed_rows"] == 0
    assert result["extract_date"] == dt.date(2023, 2, 1)  # no date in the name: the latest purchase date
    rows = query(crypto_env.database_url,
                 "SELECT line_no, site_id, user_id, purchase_date, crypto_type, purchase_price, purchase_units,"
                 " source, batch_id FROM raw.bt_crypto_transaction_history ORDER BY line_no")
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
        assert conn.execute("SELECT count(*), min(source) FROM raw.bt_crypto_transaction_history").fetchone() == (12, url)
