"""The landing prefix <KPI_STORAGE_URL>/landing/crypto/: files dropped there are ingested by the platform.

Against a local folder (file://) and the real S3 server (SeaweedFS), through the function the DAG's first
task calls and through `kpi crypto ingest-landing`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid

from tests.crypto.conftest import HEADER, dmy, query

DAY = dt.date(2026, 8, 3)
NAME = f"BT_CRYPTO_TRANSACTION_HISTORY_{DAY.isoformat()}.csv"


def _extract(users: range, price: int = 1) -> bytes:
    return (HEADER + "\n" + "\n".join(f"CHILE,{u},{dmy(DAY)},BTC,{price},1" for u in users) + "\n").encode()


def _drop(settings, files: dict[str, bytes]) -> str:
    from kpi.crypto.landing import landing_url
    from kpi.storage import join, write_bytes

    base = landing_url(settings)
    for name, data in files.items():
        write_bytes(join(base, name), data, settings)
    return base


def _assert_lands_and_sets_aside(settings) -> None:
    from kpi.crypto.landing import LandingError, ingest_landing, raise_for_set_aside
    from kpi.storage import exists, list_files, read_bytes

    base = _drop(settings, {
        NAME: _extract(range(1, 11)),
        "BT_CRYPTO_TRANSACTION_HISTORY_2026-08-02.csv": _extract(range(11, 16)),
        "again_2026-08-03.csv": _extract(range(1, 11)),                       # same bytes as NAME: skipped
        "scan_2026-08-03.csv": b"%PDF-1.7\n\x00\x01\x02\x03binary" * 50,      # not a CSV: set aside
        "export_2026-08-03.csv": b"ID;NAME\n1;x\n",                           # wrong header: set aside
        "upload_2026-08-04.csv.part": _extract(range(20, 21)),                 # still being uploaded: waits
    })
    summary = ingest_landing(settings)
    assert summary["landing_url"] == base + "/"
    assert sorted(f["source"].rsplit("/", 1)[1] for f in summary["ingested"]) == [
        "BT_CRYPTO_TRANSACTION_HISTORY_2026-08-02.csv", NAME]
    assert {f["extract_date"] for f in summary["ingested"]} == {DAY, DAY - dt.timedelta(days=1)}
    assert [f["file"].rsplit("/", 1)[1] for f in summary["skipped"]] == ["again_2026-08-03.csv"]
    reasons = {f["file"].rsplit("/", 1)[1]: f["reason"] for f in summary["set_aside"]}
    assert set(reasons) == {"scan_2026-08-03.csv", "export_2026-08-03.csv"}
    assert "binary" in reasons["scan_2026-08-03.csv"] and "lacks column(s)" in reasons["export_2026-08-03.csv"]
    for aside in summary["set_aside"]:
        assert exists(aside["moved_to"], settings) and "/rejected/" in aside["moved_to"]
        assert read_bytes(aside["moved_to"] + ".reason.txt", settings).decode().strip() == aside["reason"]
    for done in summary["ingested"] + summary["skipped"]:
        assert "/processed/" in done["moved_to"] and exists(done["moved_to"], settings)
    assert [u.rsplit("/", 1)[1] for u in list_files(base, settings)] == ["upload_2026-08-04.csv.part"]
    assert query(settings.database_url, "SELECT count(*) FROM raw.bt_crypto_transaction_history")[0][0] == 15
    archived = query(settings.database_url, "SELECT archived_url FROM raw.crypto_ingest_batches ORDER BY 1")
    assert sorted(a for (a,) in archived) == sorted(f["moved_to"] for f in summary["ingested"])
    try:
        raise_for_set_aside(summary)
        raise AssertionError("set-aside files must fail loudly")
    except LandingError as exc:
        assert "scan_2026-08-03.csv" in str(exc) and "export_2026-08-03.csv" in str(exc)
    # nothing new: a second pass does nothing; the same file dropped again is skipped by its content
    assert ingest_landing(settings)["ingested"] == []
    _drop(settings, {NAME: _extract(range(1, 11))})
    again = ingest_landing(settings)
    assert again["ingested"] == [] and len(again["skipped"]) == 1 and again["set_aside"] == []


def test_files_landing_on_a_local_folder_are_ingested_moved_or_set_aside(crypto_env):
    _assert_lands_and_sets_aside(crypto_env)


def test_files_landing_in_object_storage_are_ingested_moved_or_set_aside(crypto_env, s3_server, monkeypatch):
    from kpi.settings import reload_settings

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KPI_STORAGE_URL", f"s3://kpi/landing-test-{uuid.uuid4().hex[:8]}")
    _assert_lands_and_sets_aside(reload_settings())


def test_kpi_crypto_ingest_landing_prints_what_it_did_and_fails_on_a_set_aside_file(crypto_env):
    def cli() -> tuple[int, dict]:
        res = subprocess.run([sys.executable, "-m", "kpi.cli", "crypto", "ingest-landing"], capture_output=True,
                             text=True, env=dict(os.environ), timeout=300, check=False)
        return res.returncode, json.loads(res.stdout.strip().splitlines()[-1])

    _drop(crypto_env, {NAME: _extract(range(1, 11))})
    code, summary = cli()
    assert code == 0 and summary["ok"] is True and summary["rows"] == 10
    assert [f["extract_date"] for f in summary["ingested"]] == [DAY.isoformat()]
    _drop(crypto_env, {NAME: _extract(range(1, 11)), "notes_2026-08-03.csv": b"just some notes\n"})
    code, summary = cli()
    assert code == 1 and summary["ok"] is False and len(summary["skipped"]) == 1
    assert "notes_2026-08-03.csv" in summary["error"] and summary["set_aside"][0]["reason"] in summary["error"]
