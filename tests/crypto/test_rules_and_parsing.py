"""Unit tests: header mapping, extract dates, the rule list, the gate, the simulator (no database)."""

from __future__ import annotations

import datetime as dt

import pytest
from kpi.crypto import rules
from kpi.crypto.ingest import IngestError, extract_date_from_name, map_header
from kpi.crypto.simulate import ANOMALIES, ANOMALY_KINDS, simulate_extracts
from kpi.crypto.steps import judge_rejects
from kpi.crypto.window import window_bounds
from kpi.settings import Settings


def test_header_is_matched_case_insensitively_in_any_order():
    header = ["purchase_units", " Site_Id", "USER_ID", "crypto_type", "Purchase_Date", "PURCHASE_PRICE"]
    positions = map_header(header)
    assert [header[i].strip().lower() for i in positions] == [
        "site_id", "user_id", "purchase_date", "crypto_type", "purchase_price", "purchase_units"]


def test_header_without_a_column_is_refused_naming_it():
    with pytest.raises(IngestError, match="PURCHASE_UNITS"):
        map_header(["SITE_ID", "USER_ID", "PURCHASE_DATE", "CRYPTO_TYPE", "PURCHASE_PRICE"])


def test_extract_date_comes_from_the_last_iso_date_in_the_name():
    assert extract_date_from_name("s3://b/2025-12-31/BT_2026-01-04.csv") == dt.date(2026, 1, 4)
    assert extract_date_from_name("/x/BT_CRYPTO_TRANSACTION_HISTORY.csv") is None
    assert extract_date_from_name("/x/BT_2026-02-31.csv") is None


def test_window_is_anchored_on_the_logical_date():
    assert window_bounds(dt.date(2026, 1, 10), Settings(crypto_window_days=5)) == (
        dt.date(2026, 1, 6), dt.date(2026, 1, 10))


def test_rule_list_has_unique_reasons_and_feeds_the_row_level_sql():
    reasons = [r.reason for r in rules.RULES]
    assert len(reasons) == len(set(reasons)) >= 20
    sql = rules.reasons_sql()
    for rule in rules.RULES:
        assert rules.rule_case_sql(rule) in sql
        assert f"WHEN {rule.predicate} THEN '{rule.reason}' END" in rules.rule_case_sql(rule)


def test_only_canonically_spelled_allowed_values_can_skip_the_spelling_rule():
    params = rules.sql_params(["ARGENTINA", "brasil", "CHILE "], ["BTC", "eth", "USDT"])
    assert params["sites"] == ["ARGENTINA", "brasil", "CHILE "]
    assert params["canonical_sites"] == ["ARGENTINA"]
    assert params["canonical_cryptos"] == ["BTC", "USDT"]


def test_rule_list_feeds_the_expectation_suite_one_expectation_per_rule():
    import great_expectations as gx

    gx.get_context(mode="ephemeral")  # suites live in a context
    suite = rules.expectation_suite(["ARGENTINA"], ["BTC"])
    tagged = [e.meta["reason"] for e in suite.expectations]
    assert tagged == ["columns_present", *[r.reason for r in rules.RULES], "unique_keys"]
    in_set = {e.meta["reason"]: e for e in suite.expectations if type(e).__name__ == "ExpectColumnValuesToBeInSet"}
    assert list(in_set["site_id_unknown"].value_set) == ["ARGENTINA"]


def test_every_simulated_anomaly_maps_to_a_known_reason():
    outcomes = set(ANOMALIES.values())
    assert outcomes <= set(rules.REASONS) | {"superseded"}
    assert len(ANOMALY_KINDS) >= 20


@pytest.mark.parametrize(("valid", "rejected", "threshold", "passes"), [
    (95, 5, 0.05, True), (94, 6, 0.05, False), (0, 0, 0.05, True), (10, 0, 0.0, True), (9, 1, 0.0, False)])
def test_gate_compares_the_rejected_share_of_validated_rows(valid, rejected, threshold, passes):
    run = {"valid": valid, "quarantined": rejected, "superseded": 1000, "logical_date": "2026-01-01",
           "top_reasons": {"site_id_unknown": rejected}}
    gate = judge_rejects(run, Settings(crypto_reject_threshold=threshold))
    assert gate.passed is passes and gate.reason == (None if passes else "reject_share")
    assert gate.reject_share == pytest.approx(rejected / (valid + rejected) if valid + rejected else 0.0)


def test_simulator_is_deterministic_and_plays_updates_deletions_and_anomalies(tmp_path):
    kwargs = {"rows_per_day": 400, "anomaly_rate": 0.2, "update_rate": 0.05, "delete_rate": 0.05}
    a = simulate_extracts(dt.date(2026, 3, 1), dt.date(2026, 3, 4), str(tmp_path / "a"), seed=3, **kwargs)
    b = simulate_extracts(dt.date(2026, 3, 1), dt.date(2026, 3, 4), str(tmp_path / "b"), seed=3, **kwargs)
    c = simulate_extracts(dt.date(2026, 3, 1), dt.date(2026, 3, 4), str(tmp_path / "c"), seed=4, **kwargs)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == [f"BT_CRYPTO_TRANSACTION_HISTORY_2026-03-0{d}.csv" for d in range(1, 5)]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert sorted(f.rsplit("/", 1)[1] for f in c["files"]) == files  # another seed: the same days, other rows
    assert (tmp_path / "a" / files[-1]).read_bytes() != (tmp_path / "c" / files[-1]).read_bytes()
    assert a["days"][0]["days_sent"] == 1 and a["days"][-1]["days_sent"] > 1  # later days re-send changed days
    assert sum(d["updates"] for d in a["days"]) > 0 and sum(d["deletions"] for d in a["days"]) > 0
    assert len(a["anomaly_kinds"]) >= 20
    assert a["days"] == b["days"] and a["anomaly_kinds"] == b["anomaly_kinds"]
    first = (tmp_path / "a" / files[0]).read_text().splitlines()
    assert first[0] == "SITE_ID,USER_ID,PURCHASE_DATE,CRYPTO_TYPE,PURCHASE_PRICE,PURCHASE_UNITS"
    everything = "".join((tmp_path / "a" / f).read_text() for f in files)
    assert ",EXTRA\n" in everything and ",DOGEX," in everything and ",31/2/2026," in everything


def test_simulator_refuses_a_reversed_range(tmp_path):
    with pytest.raises(ValueError, match="before"):
        simulate_extracts(dt.date(2026, 3, 2), dt.date(2026, 3, 1), str(tmp_path))
