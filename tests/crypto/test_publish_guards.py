"""What the publish itself refuses: too many keys to deactivate, and any run not validated or not quarantined."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from tests.crypto.conftest import dmy, prod_snapshot, query, write_extract

D = dt.date(2026, 6, 1)


def _published_day(settings, tmp_path, users: int = 100) -> None:
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window

    rows = [f"COLOMBIA,{u},{dmy(D)},ADA,1,{u}" for u in range(1, users + 1)]
    ingest_file(str(write_extract(tmp_path / "full", D, rows)), settings=settings)
    assert run_window(D, settings=settings)["inserted"] == users


def test_a_truncated_extract_fails_the_gate_instead_of_deactivating_what_it_lacks(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.pipeline import run_window

    _published_day(crypto_env, tmp_path)
    before = prod_snapshot(crypto_env.database_url)
    # the next extract re-sends day D cut off after 60 of its 100 rows
    truncated = [f"COLOMBIA,{u},{dmy(D)},ADA,1,{u}" for u in range(1, 61)]
    ingest_file(str(write_extract(tmp_path / "cut", D + dt.timedelta(days=1), truncated)), settings=crypto_env)
    res = subprocess.run([sys.executable, "-m", "kpi.cli", "crypto", "run", "--date", (D + dt.timedelta(days=1)).isoformat()],
                         capture_output=True, text=True, env=dict(os.environ), timeout=600, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["gate"] == "failed" and summary["gate_reason"] == "deactivation_share"
    assert summary["would_deactivate"] == 40 and summary["active_keys"] == 100 and summary["published"] == 0
    assert "would deactivate 40 of the 100 active keys" in summary["error"]
    assert prod_snapshot(crypto_env.database_url) == before  # nothing published, nothing deactivated
    record = query(crypto_env.database_url, "SELECT status, gate_reason, would_deactivate, published FROM dqm.dq_runs"
                   " WHERE run_id = %s", (summary["run_id"],))
    assert record == [("gate_failed", "deactivation_share", 40, 0)]
    # a share that allows it (the source really deleted 40 % of the day) publishes the deletions
    allowed = crypto_env.model_copy(update={"crypto_max_deactivation_share": 0.4})
    published = run_window(D + dt.timedelta(days=1), settings=allowed)
    assert published["status"] == "published" and published["deactivated"] == 40


def test_publish_refuses_a_run_whose_validation_was_skipped(crypto_env, tmp_path):
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.steps import NotPublishable, publish_window, quarantine_rows, stage_window

    _published_day(crypto_env, tmp_path)
    before = prod_snapshot(crypto_env.database_url)
    changed = [f"COLOMBIA,{u},{dmy(D)},ADA,2,{u}" for u in range(1, 101)]
    ingest_file(str(write_extract(tmp_path / "new", D + dt.timedelta(days=1), changed)), settings=crypto_env)
    # a DAG run whose validate task was marked successful in the UI: stage, quarantine, publish
    stage_window(D, "skipped-validation", crypto_env)
    quarantine_rows(D, "skipped-validation", crypto_env)
    with pytest.raises(NotPublishable, match="has not been validated"):
        publish_window(D, "skipped-validation", crypto_env)
    assert prod_snapshot(crypto_env.database_url) == before
    record = query(crypto_env.database_url, "SELECT status, error, published FROM dqm.dq_runs WHERE run_id = %s",
                   ("skipped-validation",))
    assert record[0][0] == "failed" and "publish: NotPublishable" in record[0][1] and record[0][2] is None


def test_publish_refuses_a_failed_or_disagreeing_validation_and_unrecorded_rejects(crypto_env, tmp_path, monkeypatch):
    from kpi.crypto import validation
    from kpi.crypto.ingest import ingest_file
    from kpi.crypto.steps import (
        NotPublishable,
        ValidationFailed,
        publish_window,
        quarantine_rows,
        stage_window,
        validate_window,
    )

    rows = [f"COLOMBIA,{u},{dmy(D)},ADA,1,1" for u in range(1, 21)] + [f"colombia,99,{dmy(D)},ADA,1,1"]
    ingest_file(str(write_extract(tmp_path, D, rows)), settings=crypto_env)
    # validated, but the rejects were never recorded (the quarantine task skipped)
    stage_window(D, "no-quarantine", crypto_env)
    validate_window(D, "no-quarantine", crypto_env)
    with pytest.raises(NotPublishable, match="rejected rows were not recorded"):
        publish_window(D, "no-quarantine", crypto_env)
    # GE disagrees with the row-level reasons: the validate step fails, and publish refuses whatever runs next
    real = validation.run_expectations

    def disagreeing(settings, run_id, day):
        outcome = real(settings, run_id, day)
        outcome["unexpected"]["site_id_not_canonical"] += 1
        return outcome

    monkeypatch.setattr(validation, "run_expectations", disagreeing)
    stage_window(D, "disagrees", crypto_env)
    with pytest.raises(ValidationFailed, match="disagree"):
        validate_window(D, "disagrees", crypto_env)
    quarantine_rows(D, "disagrees", crypto_env)
    with pytest.raises(NotPublishable, match="failed its validation"):
        publish_window(D, "disagrees", crypto_env)
    assert query(crypto_env.database_url, "SELECT count(*) FROM prod.bt_crypto_events")[0][0] == 0
    # a run validated, then staged again without validating: the new stage's rows are not validated
    monkeypatch.undo()
    stage_window(D, "restaged", crypto_env)
    validate_window(D, "restaged", crypto_env)
    stage_window(D, "restaged", crypto_env)
    quarantine_rows(D, "restaged", crypto_env)
    with pytest.raises(NotPublishable, match="has not been validated"):
        publish_window(D, "restaged", crypto_env)
    assert query(crypto_env.database_url, "SELECT count(*) FROM prod.bt_crypto_events")[0][0] == 0
