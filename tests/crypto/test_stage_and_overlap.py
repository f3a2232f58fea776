"""The stage's shortcuts never change a result, and the overlapped run commits only validated rows.

Real Postgres: the guards of the rule list are checked against the unguarded predicates on tricky values,
raw's derived columns against the arithmetic they replace, and a run whose validation fails (or disagrees
with the row-level reasons) while its publish is already written rolls that publish back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import psycopg
import pytest
from kpi.crypto import rules
from kpi.db import connect

from .conftest import dmy, prod_snapshot, query, write_extract

DAY = dt.date(2026, 5, 10)

# (site_id, user_id_text, user_id) as the stage sees them: user_id is raw's guarded cast of the text
TRICKY = [
    ("ARGENTINA", "12", 12), ("argentina", "12", 12), ("BRASIL", "-1", None), ("CHILE ", "007", 7),
    ("ATLANTIS", "1234567890123456789", None), (None, None, None), ("", "1.5", None), ("brasil", "x", None),
    ("ARGENTINA", "123456789012345678", 123456789012345678), ("MÉXICO", " 5", None),
]


def test_guards_never_change_which_rules_a_row_breaks(pg_url):
    # allowed values that are not canonically spelled must not let a row skip the spelling rule
    params = rules.sql_params(["ARGENTINA", "argentina", "CHILE "], ["BTC"])
    unguarded = tuple(dataclasses.replace(r, guard=None) for r in rules.RULES
                      if r.reason.startswith(("site_id", "user_id")))
    guarded = tuple(r for r in rules.RULES if r.reason.startswith(("site_id", "user_id")))
    assert any(r.guard for r in guarded)
    values = ", ".join(f"(%(s{i})s::text, %(t{i})s::text, %(u{i})s::bigint)" for i in range(len(TRICKY)))
    for i, (site, text, user) in enumerate(TRICKY):
        params |= {f"s{i}": site, f"t{i}": text, f"u{i}": user}
    sql = (f"SELECT site_id, user_id_text, {rules.reasons_sql(guarded)}, {rules.reasons_sql(unguarded)}"
           f" FROM (VALUES {values}) AS t (site_id, user_id_text, user_id)")
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(sql, params).fetchall()
    assert len(rows) == len(TRICKY)
    for site, user, with_guard, without in rows:
        assert with_guard == without, (site, user)
    by_site = {(s, u): g for s, u, g, _ in rows}
    assert "site_id_not_canonical" in by_site[("argentina", "12")]  # allowed, but not canonical
    assert "user_id_too_long" in by_site[("ATLANTIS", "1234567890123456789")]


def test_raw_derives_scales_and_the_exact_value_once_at_ingest(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file

    d = dmy(DAY)
    lines = [f"BRASIL,1,{d},BTC,100.50,2", f"BRASIL,2,{d},BTC,0.000000001,3", f"BRASIL,3,{d},BTC,abc,1",
             f"BRASIL,4,{d},BTC,99999999999,99999999999", f"BRASIL,5,{d},BTC,1.10,0.3333"]
    ingest_file(str(write_extract(tmp_path, DAY, lines)), settings=crypto_env)
    rows = query(crypto_env.database_url,
                 "SELECT user_id, purchase_price_scale, purchase_units_scale, purchase_value_exact,"
                 " purchase_value_fitted, purchase_price_numeric * purchase_units_numeric"
                 " FROM raw.bt_crypto_transaction_history ORDER BY line_no")
    got = {r[0]: r[1:] for r in rows}
    assert got["1"][:2] == (1, 0) and got["1"][2] == got["1"][4] == got["1"][3]
    assert got["2"][0] == 9  # significant decimals beyond prod's 8: a rule rejects it
    assert got["3"] == (None, 0, None, None, None)
    # 99999999999 * 99999999999 is exact, but does not fit prod's numeric(38, 16): NULL, a rule rejects it
    assert got["4"][2] == got["4"][4] == 99999999999 ** 2 and got["4"][3] is None
    assert got["5"][2] == got["5"][4] and got["5"][0] == 1 and got["5"][1] == 4


def _one_day(crypto_env, tmp_path, price: int, users: int = 50) -> None:
    from kpi.crypto.ingest import ingest_file

    lines = [f"BRASIL,{u},{dmy(DAY)},BTC,{price},1" for u in range(1, users + 1)] + [f"brasil,999,{dmy(DAY)},BTC,1,1"]
    ingest_file(str(write_extract(tmp_path / str(price), DAY, lines)), settings=crypto_env)


@pytest.mark.parametrize("failure", ["ge_raises", "ge_disagrees"])
def test_a_validation_failure_rolls_back_the_publish_written_beside_it(crypto_env, tmp_path, monkeypatch, failure):
    from kpi.crypto import pipeline, validation
    from kpi.crypto.pipeline import run_window

    _one_day(crypto_env, tmp_path, 100)
    first = run_window(DAY, settings=crypto_env)
    assert first["inserted"] == 50 and first["quarantined"] == 1
    before = prod_snapshot(crypto_env.database_url)
    rejects_before = query(crypto_env.database_url, "SELECT raw_id, last_run_id FROM dqm.bt_crypto_events_rejects")
    _one_day(crypto_env, tmp_path, 200)  # a newer extract changes every row

    published: list[bool] = []
    real_publish = pipeline.publish_rows

    def spy_publish(*args, **kwargs):
        result = real_publish(*args, **kwargs)
        published.append(result["updated"] == 50)
        return result

    real_expectations = validation.run_expectations

    def failing_expectations(settings, run_id, logical_date):
        # wait until the publish has written its rows, so the failure lands after them
        import time

        deadline = time.monotonic() + 60
        while not published and time.monotonic() < deadline:
            time.sleep(0.05)
        if failure == "ge_raises":
            raise RuntimeError("validation store unreachable")
        outcome = real_expectations(settings, run_id, logical_date)
        outcome["unexpected"]["site_id_not_canonical"] += 1
        return outcome

    monkeypatch.setattr(pipeline, "publish_rows", spy_publish)
    monkeypatch.setattr(validation, "run_expectations", failing_expectations)
    message = "unreachable" if failure == "ge_raises" else "disagree"
    with pytest.raises(RuntimeError, match=message):
        run_window(DAY, run_id=f"overlap-{failure}", settings=crypto_env)
    assert published == [True]  # the publish had written its 50 updates before the failure
    assert prod_snapshot(crypto_env.database_url) == before
    assert query(crypto_env.database_url, "SELECT raw_id, last_run_id FROM dqm.bt_crypto_events_rejects") == \
        rejects_before
    status = query(crypto_env.database_url, "SELECT status, error FROM dqm.dq_runs WHERE run_id = %s",
                   (f"overlap-{failure}",))
    assert status[0][0] == "failed" and message in status[0][1]
    monkeypatch.undo()
    assert run_window(DAY, settings=crypto_env)["updated"] == 50  # the next run publishes


def test_a_stale_stage_is_staged_again_by_the_orchestrated_publish(crypto_env, tmp_path):
    from kpi.crypto.pipeline import publish_window_or_fail, run_window
    from kpi.crypto.steps import StaleStage, publish_window, quarantine_rows, stage_window, validate_window

    _one_day(crypto_env, tmp_path, 100)
    run_window(DAY, settings=crypto_env)
    _one_day(crypto_env, tmp_path, 200)
    # DAG run A gets as far as quarantine ...
    stage_window(DAY, "dag-a", crypto_env)
    validate_window(DAY, "dag-a", crypto_env)
    quarantine_rows(DAY, "dag-a", crypto_env)
    # ... when run B, over the same window and newer data, publishes first
    _one_day(crypto_env, tmp_path, 300)
    assert run_window(DAY, "dag-b", crypto_env)["updated"] == 50
    with pytest.raises(StaleStage, match="dag-b"):
        publish_window(DAY, "dag-a", crypto_env)
    result = publish_window_or_fail(DAY, "dag-a", crypto_env)
    assert result["restaged"] is True and result["gate"] == "passed"
    assert result["updated"] == 0 and result["published"] == 50  # B had published the same source state
    prices = query(crypto_env.database_url, "SELECT DISTINCT purchase_price FROM prod.bt_crypto_events")
    assert prices == [(300,)]
    status = query(crypto_env.database_url, "SELECT status FROM dqm.dq_runs WHERE run_id = 'dag-a'")
    assert status == [("published",)]


def test_a_window_without_raw_rows_publishes_nothing_and_says_so(crypto_env, tmp_path):
    from kpi.crypto.pipeline import run_window

    _one_day(crypto_env, tmp_path, 100)
    empty = run_window(DAY + dt.timedelta(days=30), settings=crypto_env)
    assert empty["raw_rows"] == 0 and empty["gate"] == "passed"
    assert len(empty["warnings"]) == 1 and "no raw rows in the window" in empty["warnings"][0]
    assert run_window(DAY, settings=crypto_env)["warnings"] == []


def test_a_duplicated_key_in_the_staged_rows_fails_the_structural_check(crypto_env, tmp_path):
    from kpi.crypto.steps import ValidationFailed, stage_window, validate_window

    _one_day(crypto_env, tmp_path, 100)
    stage_window(DAY, "dup-key", crypto_env)
    # a stage bug that let two current rows share a key: GE's unique-keys check (count only) must see it
    with connect(crypto_env.database_url) as conn:
        conn.execute("INSERT INTO staging.bt_crypto_events_candidate SELECT * FROM staging.bt_crypto_events_candidate"
                     " WHERE run_id = 'dup-key' AND status = 'valid' LIMIT 2")
    with pytest.raises(ValidationFailed, match=r"structural expectations failed .*'unique_keys': 2"):
        validate_window(DAY, "dup-key", crypto_env)
