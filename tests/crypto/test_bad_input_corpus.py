"""A corpus of malformed rows, one per kind, through the real pipeline: each gets its reason, nothing is lost."""

from __future__ import annotations

import datetime as dt

from tests.crypto.conftest import query, write_extract

EXTRACT = dt.date(2026, 2, 10)
D = "10/2/2026"

# kind -> (line as received, the reason it must get). Users are distinct, so no two rows share a key.
CORPUS: dict[str, tuple[str, str]] = {
    "site_missing": (f",1001,{D},BTC,100.5,1", "site_id_missing"),
    "all_fields_empty": (",,,,,", "site_id_missing"),
    "site_unknown": (f"PERU,1002,{D},BTC,100.5,1", "site_id_unknown"),
    "site_lower_case": (f"argentina,1003,{D},BTC,100.5,1", "site_id_not_canonical"),
    "site_with_spaces": (f" BRASIL ,1004,{D},BTC,100.5,1", "site_id_not_canonical"),
    "user_missing": (f"ARGENTINA,,{D},BTC,100.5,1", "user_id_missing"),
    "user_not_integer": (f"ARGENTINA,abc,{D},BTC,100.5,1", "user_id_not_integer"),
    "user_negative": (f"ARGENTINA,-5,{D},BTC,100.5,1", "user_id_not_integer"),
    "user_id_too_long": (f"ARGENTINA,1234567890123456789012,{D},BTC,100.5,1", "user_id_too_long"),
    "user_with_decimals": (f"ARGENTINA,1008.0,{D},BTC,100.5,1", "user_id_not_integer"),
    "date_missing": ("ARGENTINA,1009,,BTC,100.5,1", "purchase_date_missing"),
    "date_iso_format": ("ARGENTINA,1010,2026-02-10,BTC,100.5,1", "purchase_date_bad_format"),
    "date_as_words": ("ARGENTINA,1011,Feb 10 2026,BTC,100.5,1", "purchase_date_bad_format"),
    "date_impossible_day": ("ARGENTINA,1012,31/2/2026,BTC,100.5,1", "purchase_date_impossible"),
    "date_month_13": ("ARGENTINA,1013,1/13/2026,BTC,100.5,1", "purchase_date_impossible"),
    "date_day_zero": ("ARGENTINA,1014,0/2/2026,BTC,100.5,1", "purchase_date_impossible"),
    "date_after_extract": ("ARGENTINA,1015,11/2/2026,BTC,100.5,1", "purchase_date_after_extract"),
    "date_before_bitcoin": ("ARGENTINA,1016,1/1/2008,BTC,100.5,1", "purchase_date_too_early"),
    "crypto_missing": (f"ARGENTINA,1017,{D},,100.5,1", "crypto_type_missing"),
    "crypto_unknown": (f"ARGENTINA,1018,{D},DOGEX,100.5,1", "crypto_type_unknown"),
    "crypto_lower_case": (f"ARGENTINA,1019,{D},btc,100.5,1", "crypto_type_not_canonical"),
    "crypto_with_spaces": (f"ARGENTINA,1020,{D}, ETH,100.5,1", "crypto_type_not_canonical"),
    "price_missing": (f"ARGENTINA,1021,{D},BTC,,1", "purchase_price_missing"),
    "price_not_numeric": (f"ARGENTINA,1022,{D},BTC,abc,1", "purchase_price_not_numeric"),
    "price_decimal_comma": (f'ARGENTINA,1023,{D},BTC,"100,5",1', "purchase_price_not_numeric"),
    "price_nan": (f"ARGENTINA,1024,{D},BTC,NaN,1", "purchase_price_not_numeric"),
    "price_scientific": (f"ARGENTINA,1025,{D},BTC,1e3,1", "purchase_price_not_numeric"),
    "price_with_currency": (f"ARGENTINA,1026,{D},BTC,$100,1", "purchase_price_not_numeric"),
    "price_negative": (f"ARGENTINA,1027,{D},BTC,-100.5,1", "purchase_price_negative"),
    "price_too_precise": (f"ARGENTINA,1028,{D},BTC,100.123456789,1", "purchase_price_too_precise"),
    "price_too_large": (f"ARGENTINA,1029,{D},BTC,1000000000000000,1", "purchase_price_too_large"),
    "units_missing": (f"ARGENTINA,1030,{D},BTC,100.5,", "purchase_units_missing"),
    "units_not_numeric": (f"ARGENTINA,1031,{D},BTC,100.5,one", "purchase_units_not_numeric"),
    "units_zero": (f"ARGENTINA,1032,{D},BTC,100.5,0", "purchase_units_not_positive"),
    "units_negative": (f"ARGENTINA,1033,{D},BTC,100.5,-1", "purchase_units_not_positive"),
    "units_too_precise": (f"ARGENTINA,1034,{D},BTC,100.5,0.000000001", "purchase_units_too_precise"),
    "units_too_large": (f"ARGENTINA,1035,{D},BTC,1,2000000000000000", "purchase_units_too_large"),
    "value_out_of_range": (f"ARGENTINA,1036,{D},BTC,900000000000000,10000", "purchase_value_out_of_range"),
    "value_not_exact": (f"ARGENTINA,1037,{D},BTC,0.123456789,0.123456789", "purchase_price_too_precise"),
    "too_few_columns": (f"ARGENTINA,1040,{D},BTC,100.5", "column_count_mismatch"),
    "too_many_columns": (f"ARGENTINA,1041,{D},BTC,100.5,1,EXTRA", "column_count_mismatch"),
    # last: an unbalanced quote swallows the rest of the file into one field
    "unbalanced_quote": (f'ARGENTINA,1042,{D},"BTC,100.5,1', "column_count_mismatch"),
}
VALID = [f"ARGENTINA,{2000 + i},{D},BTC,20000.5,0.25" for i in range(10)]
DUPLICATES = [
    f"MEXICO,3001,{D},ETH,1000,1",   # conflicting duplicate: superseded by the next line
    f"MEXICO,3001,{D},ETH,1001,1",
    f"CHILE,3002,{D},USDT,1,50",     # exact duplicate: superseded by the next line
    f"CHILE,3002,{D},USDT,1,50",
]


def test_every_malformed_kind_is_quarantined_with_its_reason_and_its_raw_values(crypto_env, tmp_path, monkeypatch):
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window
    from kpi.settings import reload_settings

    monkeypatch.setenv("KPI_CRYPTO_REJECT_THRESHOLD", "1.0")  # this file is mostly bad on purpose
    settings = reload_settings()
    kinds = list(CORPUS)
    lines = VALID + DUPLICATES + [CORPUS[k][0] for k in kinds]
    first_corpus_line = 2 + len(VALID) + len(DUPLICATES)
    path = write_extract(tmp_path / "src", EXTRACT, lines)
    ingested = ingest_file(str(path), settings=settings)
    assert ingested["rows"] == len(lines) and ingested["extract_date"] == EXTRACT
    summary = run_window(EXTRACT, "corpus-run", settings)

    rejects = {line_no: (reason, reasons, site) for line_no, reason, reasons, site in query(
        settings.database_url, "SELECT line_no, reason, reasons, site_id FROM dqm.bt_crypto_events_rejects")}
    got = {k: rejects.get(first_corpus_line + i, ("<not rejected>",))[0] for i, k in enumerate(kinds)}
    assert got == {k: reason for k, (_, reason) in CORPUS.items()}
    assert len(set(got)) >= 20
    # the original raw values are kept exactly, and every broken rule is listed
    assert rejects[first_corpus_line + kinds.index("site_with_spaces")][2] == " BRASIL "
    assert "purchase_value_mismatch" in rejects[first_corpus_line + kinds.index("value_not_exact")][1]
    assert set(rejects[first_corpus_line + kinds.index("all_fields_empty")][1]) >= {
        "site_id_missing", "user_id_missing", "purchase_date_missing", "crypto_type_missing"}
    unbalanced = query(settings.database_url, "SELECT raw_line FROM raw.bt_crypto_transaction_history"
                                              " WHERE line_no = %s", (first_corpus_line + kinds.index("unbalanced_quote"),))
    assert unbalanced[0][0].startswith('ARGENTINA,1042,10/2/2026,"BTC')

    # conservation: every raw row is published, quarantined or superseded
    assert summary["raw_rows"] == len(lines)
    assert summary["published"] == len(VALID) + 2
    assert summary["quarantined"] == len(CORPUS) and summary["superseded"] == 2
    assert summary["raw_rows"] == summary["published"] + summary["quarantined"] + summary["superseded"]
    prod = {(s, u): (float(p), float(v)) for s, u, p, v in query(
        settings.database_url, "SELECT site_id, user_id, purchase_price, purchase_value FROM prod.bt_crypto_events")}
    assert prod[("MEXICO", 3001)] == (1001.0, 1001.0)  # the latest line of a conflicting duplicate wins
    assert prod[("ARGENTINA", 2000)] == (20000.5, 5000.125)  # value = price * units, exact
