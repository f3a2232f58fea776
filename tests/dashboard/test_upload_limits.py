"""Batch uploads are capped (server and page, one value from the settings) and read in bounded chunks."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pandas as pd
import pytest
from kpi.dashboard.scoring import (
    ID,
    PROBABILITY,
    InvalidInput,
    UploadLimits,
    check_upload_limits,
    features_from_sources,
    form_fields,
    score_upload,
)

from .conftest import page_text, stop_process

SOURCES = ("PAYMENTS.csv", "ACTIVE_USER.csv", "DEMOGRAFICOS.csv", "DINERO_CUENTA.csv", "MARKETPLACE_DATA.csv")


def test_a_file_over_the_size_cap_is_named_with_its_size_the_cap_and_the_setting():
    limits = UploadLimits(max_mb=1)
    files = {"users.csv": b"x" * (1024 * 1024 + 1), "small.csv": b"x" * 10}
    assert check_upload_limits(files, limits) == [
        ("users.csv is 1.0 MB, over the limit of 1 MB per file (KPI_DASHBOARD_MAX_UPLOAD_MB); split it, or score "
        "the sources with `kpi churn score`")]
    assert check_upload_limits({"users.csv": b"x" * (1024 * 1024)}, limits) == []  # exactly the cap passes


def test_source_files_with_too_many_rows_are_refused_while_they_are_copied():
    files = {name: b"CUS_CUST_ID_BUY\n1\n" for name in SOURCES}
    files["PAYMENTS.csv"] = b"CUS_CUST_ID_BUY\n" + b"1\n" * 11
    with pytest.raises(InvalidInput, match=r"PAYMENTS.csv has more than 10 data rows.*KPI_DASHBOARD_MAX_UPLOAD_ROWS"):
        features_from_sources(files, pd.Timestamp("2024-07-01").date(), UploadLimits(max_rows=10))


def test_the_limits_come_from_the_settings(monkeypatch):
    from kpi.settings import Settings

    monkeypatch.setenv("KPI_DASHBOARD_MAX_UPLOAD_MB", "7")
    monkeypatch.setenv("KPI_DASHBOARD_MAX_UPLOAD_ROWS", "1234")
    assert UploadLimits.from_settings(Settings()) == UploadLimits(max_mb=7, max_rows=1234)
    assert UploadLimits.from_settings(Settings(_env_file=None, dashboard_max_upload_mb=50)).max_bytes == 50 << 20


def test_the_chart_gives_the_server_and_the_page_the_same_cap(monkeypatch):
    from kpi.settings import Settings

    from tests.charts.platform import CHARTS, objects, render

    docs = objects(render(CHARTS / "dashboard", {"uploads": {"maxFileMb": 7, "maxRows": 2000000}}))
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--server.maxUploadSize=7" in container["args"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert UploadLimits.from_settings(Settings()) == UploadLimits(max_mb=7, max_rows=2_000_000)


def test_the_server_refuses_an_upload_over_the_cap_it_was_started_with(tmp_path):
    """`streamlit run` as `task dashboard` starts it (cap 1 MB here): a real session, real HTTP uploads."""
    import requests
    import websocket
    from kpi.dashboard.serve import streamlit_command
    from kpi.db import free_port
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    app = tmp_path / "app.py"
    app.write_text("import streamlit as st\nst.file_uploader('csv')\n")
    port = free_port()
    # XSRF off: this test sends its upload without a browser; the cap is what is under test
    cmd = streamlit_command(app, "127.0.0.1", port, max_upload_mb=1) + [
        "--server.enableXsrfProtection", "false", "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                assert time.monotonic() < deadline, "streamlit did not come up"
                time.sleep(0.25)
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/_stcore/stream", timeout=60)
        rerun = BackMsg()
        rerun.rerun_script.query_string = ""
        ws.send_binary(rerun.SerializeToString())
        session = None
        while session is None:
            msg = ForwardMsg()
            msg.ParseFromString(ws.recv())
            if msg.WhichOneof("type") == "new_session":
                session = msg.new_session.initialize.session_id

        def upload(size: int) -> requests.Response:
            return requests.put(f"http://127.0.0.1:{port}/_stcore/upload_file/{session}/f{size}", timeout=60,
                                files={"file": ("users.csv", b"1" * size, "text/csv")})

        assert upload(512 * 1024).status_code == 204
        refused = upload(2 * 1024 * 1024)
        assert refused.status_code == 413 and "too large" in refused.text
        ws.close()
    finally:
        stop_process(proc)


# --- the batch page with the session's real champion ------------------------------------------------------


def _features(churn_store, rows: int) -> pd.DataFrame:
    from kpi.churn.features import build_features_pandas, read_sources_pandas

    feats = build_features_pandas(read_sources_pandas(churn_store["data_url"]), churn_store["as_of"])
    return feats.head(rows).astype(object)


def _batch_page(app):
    app.run()
    app.switch_page("views/batch.py").run()
    return app


@pytest.mark.slow
def test_the_page_refuses_a_file_over_the_cap_with_the_reason(app, champion_env, churn_store, monkeypatch):
    from kpi.settings import reload_settings

    monkeypatch.setenv("KPI_DASHBOARD_MAX_UPLOAD_MB", "1")
    reload_settings()
    feats = _features(churn_store, 50)
    header, rows = feats.to_csv(index=False).encode().split(b"\n", 1)
    big = header + b"\n" + rows * (1 + int(1.2 * (1 << 20)) // len(rows))  # the rows again and again: 1.2 MB
    _batch_page(app).file_uploader(key="batch_upload").upload("users.csv", big, "text/csv").run()
    assert not app.exception, [e.value for e in app.exception]
    errors = " ".join(e.value for e in app.error)
    assert "users.csv is 1.2 MB, over the limit of 1 MB per file (KPI_DASHBOARD_MAX_UPLOAD_MB)" in errors
    assert "Scored rows" not in page_text(app)
    assert "At most 1 MB and 1,000,000 rows per file" in page_text(app)


@pytest.mark.slow
def test_the_page_refuses_a_file_over_the_row_limit(app, champion_env, churn_store, monkeypatch):
    from kpi.settings import reload_settings

    monkeypatch.setenv("KPI_DASHBOARD_MAX_UPLOAD_ROWS", "10")
    reload_settings()
    upload = _features(churn_store, 20).to_csv(index=False).encode()
    _batch_page(app).file_uploader(key="batch_upload").upload("users.csv", upload, "text/csv").run()
    assert not app.exception, [e.value for e in app.exception]
    errors = " ".join(e.value for e in app.error)
    assert "users.csv has more than 10 data rows, the limit per file (KPI_DASHBOARD_MAX_UPLOAD_ROWS)" in errors
    assert "Scored rows" not in page_text(app)


@pytest.mark.slow
def test_scoring_in_chunks_gives_what_scoring_at_once_gives(champion_env, churn_store):
    from kpi.churn.registry import load_champion

    champ = load_champion(champion_env)
    fields = form_fields(champ.model.input_schema())
    feats = _features(churn_store, 23)
    feats.loc[feats.index[4], champ.model.numeric_features[0]] = "lots"
    feats.loc[feats.index[17], ID] = None
    data = feats.to_csv(index=False).encode()
    at_once = score_upload(champ.model, fields, {"users.csv": data}, limits=UploadLimits(chunk_rows=1000))
    chunked = score_upload(champ.model, fields, {"users.csv": data}, limits=UploadLimits(chunk_rows=3))
    assert not at_once.problems and not chunked.problems
    pd.testing.assert_frame_equal(chunked.scored, at_once.scored)
    pd.testing.assert_frame_equal(chunked.rejected, at_once.rejected)
    assert sorted(chunked.rejected["row"]) == [5, 18]  # data-line numbers survive the chunking
    assert len(chunked.scored) == 21 and chunked.scored[PROBABILITY].between(0, 1).all()


@pytest.mark.slow
def test_a_header_only_file_is_checked_for_columns(champion_env, churn_store, tmp_path):
    from kpi.churn.registry import load_champion

    champ = load_champion(champion_env)
    fields = form_fields(champ.model.input_schema())
    header = _features(churn_store, 1).head(0).to_csv(index=False).encode()
    with open(tmp_path / "users.csv", "wb") as fh:
        fh.write(header)
    with open(tmp_path / "users.csv", "rb") as fh:  # a file object, as Streamlit hands it over
        result = score_upload(champ.model, fields, {"users.csv": fh})
    assert not result.problems and result.scored.empty and result.rejected.empty
    wrong = score_upload(champ.model, fields, {"users.csv": b"a,b\n"})
    assert wrong.problems and "lacks column(s) CUS_CUST_ID_BUY" in wrong.problems[0]
