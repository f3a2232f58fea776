"""Secrets stay out of everything the platform prints: reprs, JSON summaries, logs and error messages."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from kpi.redaction import redact_url, scrub, secret_values
from kpi.settings import Settings

DB_PASSWORD = "pg-Secret-4242"
AWS_SECRET = "aws-Secret-Key-9191"
MLFLOW_PASSWORD = "mlflow-Secret-7373"
SECRETS = (DB_PASSWORD, AWS_SECRET, MLFLOW_PASSWORD)


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://kpi:pw@db:5432/kpi", "postgresql://kpi:***@db:5432/kpi"),
    ("postgresql+psycopg://kpi:p%40ss@db/kpi?sslmode=require", "postgresql+psycopg://kpi:***@db/kpi?sslmode=require"),
    ("postgresql://db/kpi?user=kpi&password=pw", "postgresql://db/kpi?user=kpi&password=***"),
    ("http://admin:pw@mlflow:5000/", "http://admin:***@mlflow:5000/"),
    ("postgresql://postgres@127.0.0.1:5432/kpi", "postgresql://postgres@127.0.0.1:5432/kpi"),
    ("sqlite:////tmp/home/mlflow.db", "sqlite:////tmp/home/mlflow.db"),
    ("s3://kpi/prefix", "s3://kpi/prefix"),
    ("postgresql://kpi:pw@db:notaport/kpi", "postgresql://kpi:***@db:notaport/kpi"),
])
def test_redact_url_hides_passwords_and_keeps_the_rest(url, shown):
    assert redact_url(url) == shown


def test_settings_show_no_secret_in_repr_str_or_json(monkeypatch):
    monkeypatch.setenv("KPI_DATABASE_URL", f"postgresql://kpi:{DB_PASSWORD}@db:5432/kpi")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "kpi-pipelines")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://kpi:{MLFLOW_PASSWORD}@mlflow:5000")
    settings = Settings()
    shown = "\n".join([repr(settings), str(settings), settings.model_dump_json(),
                       json.dumps(settings.model_dump(mode="json"))])
    for secret in (*SECRETS, "kpi-pipelines"):
        assert secret not in shown
    assert "postgresql://kpi:***@db:5432/kpi" in repr(settings)  # the host stays visible
    # the code that connects still gets the values, through the helpers
    from kpi.db import database_url

    assert database_url(settings) == f"postgresql://kpi:{DB_PASSWORD}@db:5432/kpi"
    assert settings.resolved_mlflow_uri == f"http://kpi:{MLFLOW_PASSWORD}@mlflow:5000"
    assert settings.storage_options("s3://kpi")["secret"] == AWS_SECRET
    assert settings.store_environment()["AWS_SECRET_ACCESS_KEY"] == AWS_SECRET


def test_a_settings_validation_error_does_not_echo_its_input(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.delenv("KPI_DATABASE_URL", raising=False)
    with pytest.raises(ValueError, match="KPI_DATABASE_URL is required") as err:
        Settings(env="prod")
    assert AWS_SECRET not in str(err.value)


def test_scrub_masks_every_form_of_a_known_secret():
    env = {"KPI_DATABASE_URL": "postgresql://kpi:p%40ss-word@db/kpi", "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
           "AWS_ACCESS_KEY_ID": "kpi"}
    secrets = secret_values(env)
    text = f"auth failed for p@ss-word (p%40ss-word) with {AWS_SECRET}; user kpi"
    assert scrub(text, secrets) == "auth failed for *** (***) with ***; user kpi"  # the key id is no secret


def test_log_records_are_scrubbed_once_installed(tmp_path):
    code = textwrap.dedent(f"""
        import logging
        from kpi.redaction import install_log_scrubbing
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        install_log_scrubbing()
        log = logging.getLogger("anything")
        log.info("connecting to %s", "http://kpi:{MLFLOW_PASSWORD}@mlflow:5000")
        try:
            raise RuntimeError("secret is {AWS_SECRET}")
        except RuntimeError:
            log.exception("failed")
    """)
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
           "MLFLOW_TRACKING_URI": f"http://kpi:{MLFLOW_PASSWORD}@mlflow:5000"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert "http://kpi:***@mlflow:5000" in res.stderr and "secret is ***" in res.stderr
    assert MLFLOW_PASSWORD not in res.stderr and AWS_SECRET not in res.stderr


def _kpi(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kpi.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


@pytest.fixture()
def credentials_env(tmp_path):
    """Every credential set, every store pointing at a port nothing listens on, tracebacks on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPI_", "MLFLOW_", "AWS_"))}
    env.update({
        "KPI_HOME": str(tmp_path / "home"),
        "KPI_DEBUG": "1",
        "KPI_DATABASE_URL": f"postgresql://kpi:{DB_PASSWORD}@127.0.0.1:{closed_port()}/kpi",
        "AWS_ACCESS_KEY_ID": "kpi-pipelines",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "MLFLOW_TRACKING_URI": f"http://kpi:{MLFLOW_PASSWORD}@127.0.0.1:{closed_port()}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    })
    return env


def test_failing_commands_print_no_secret(credentials_env, tmp_path):
    from kpi.churn.simulate import simulate_sources

    sources = tmp_path / "sources"
    # valid sources: drift validates them first, then reaches MLflow, whose error carries its URL
    simulate_sources(str(sources), users=200, as_of=dt.date(2024, 7, 1))
    runs = {
        # MLflow puts its whole tracking URL, password included, into its error message
        "drift": _kpi("churn", "drift", "--data", str(sources), "--as-of", "2024-07-01", env=credentials_env),
        # the warehouse does not answer
        "crypto run": _kpi("crypto", "run", "--date", "2026-01-05", env=credentials_env),
        # pydantic used to print the whole input of a failed settings check
        "prod settings": _kpi("db", "init", env={**credentials_env, "KPI_ENV": "prod",
                                                 "KPI_DATABASE_URL": ""}),
    }
    for name, res in runs.items():
        output = res.stdout + res.stderr
        assert res.returncode == 1, (name, output[-2000:])
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert summary["ok"] is False and summary["error"], name
        for secret in SECRETS:
            assert secret not in output, f"{name}: {secret} leaked:\n{output[-3000:]}"
    drift = runs["drift"].stdout + runs["drift"].stderr
    assert "http://kpi:***@127.0.0.1" in drift  # the message is kept, only the password is masked
    assert "Traceback" in drift  # KPI_DEBUG: the traceback is printed, scrubbed


def test_dashboard_store_messages_name_the_store_without_its_password(credentials_env):
    from kpi.dashboard.reports import StoreUnavailable, check_mlflow, query_frame

    settings = Settings(env="test", database_url=credentials_env["KPI_DATABASE_URL"],
                        mlflow_tracking_uri=credentials_env["MLFLOW_TRACKING_URI"], dashboard_connect_timeout_seconds=2)
    with pytest.raises(StoreUnavailable) as db_err:
        query_frame(settings, "SELECT 1")
    with pytest.raises(StoreUnavailable) as mlflow_err:
        check_mlflow(settings)
    messages = f"{db_err.value}\n{mlflow_err.value}"
    assert "postgresql://kpi:***@127.0.0.1" in messages and "http://kpi:***@127.0.0.1" in messages
    for secret in SECRETS:
        assert secret not in messages


def test_logging_of_settings_shows_no_secret(caplog, monkeypatch):
    monkeypatch.setenv("KPI_DATABASE_URL", f"postgresql://kpi:{DB_PASSWORD}@db/kpi")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    with caplog.at_level(logging.INFO):
        logging.getLogger("kpi.test").info("settings: %s", Settings())
    assert DB_PASSWORD not in caplog.text and AWS_SECRET not in caplog.text
