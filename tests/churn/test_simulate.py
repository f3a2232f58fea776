"""The churn simulator: original shapes, determinism, time semantics, a real signal, S3 output, the CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kpi.churn.simulate import p_no_payment, roc_auc, simulate_sources
from kpi.churn.sources import ID, OUTCOMES_FILE, SNAPSHOT_DATE, SNAPSHOT_SOURCES, SOURCE_FILES, fingerprints

AS_OF = dt.date(2024, 6, 30)


def _header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


def test_files_have_the_original_shapes_plus_snapshot_dates(churn_data):
    from tests.conftest import reference_file

    for source, name in SOURCE_FILES.items():
        original = _header(reference_file("seed-data", name))
        extra = [SNAPSHOT_DATE] if source in SNAPSHOT_SOURCES else []
        assert _header(churn_data.path / name) == original + extra, name
    assert _header(churn_data.path / OUTCOMES_FILE) == [ID, "p_true", "active_next_60d"]


def test_undated_option_writes_exactly_the_original_shapes(tmp_path):
    from tests.conftest import reference_file

    simulate_sources(str(tmp_path), 200, AS_OF, seed=1, dated_snapshots=False)
    for name in SOURCE_FILES.values():
        assert _header(tmp_path / name) == _header(reference_file("seed-data", name)), name
    # one row per user: the snapshot at the as-of date only
    assert pd.read_csv(tmp_path / "ACTIVE_USER.csv")[ID].is_unique


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = simulate_sources(str(tmp_path / "a"), 500, AS_OF, seed=5)
    b = simulate_sources(str(tmp_path / "b"), 500, AS_OF, seed=5)
    c = simulate_sources(str(tmp_path / "c"), 500, AS_OF, seed=6)
    assert fingerprints(str(tmp_path / "a")) == fingerprints(str(tmp_path / "b"))
    assert (tmp_path / "a" / OUTCOMES_FILE).read_bytes() == (tmp_path / "b" / OUTCOMES_FILE).read_bytes()
    assert a["oracle_auc"] == b["oracle_auc"]
    differing = {
        k for k, v in fingerprints(str(tmp_path / "c")).items() if v != fingerprints(str(tmp_path / "a"))[k]
    }
    assert differing == set(SOURCE_FILES.values())
    assert c["rows"] != a["rows"]


def test_time_semantics_of_payments_and_snapshots(churn_data):
    pay = pd.read_csv(churn_data.path / "PAYMENTS.csv", parse_dates=["FECHA"])
    start = pd.Timestamp(churn_data.as_of - dt.timedelta(days=180))
    assert pay["FECHA"].min() >= start and pay["FECHA"].max() < pd.Timestamp(churn_data.as_of)
    assert pay["FECHA"].is_monotonic_increasing or pay["FECHA"].nunique() > 150
    users = set(pd.read_csv(churn_data.path / "DEMOGRAFICOS.csv")[ID])
    assert len(users) == churn_data.users and set(pay[ID]) <= users
    expected_dates = {pd.Timestamp(churn_data.as_of - dt.timedelta(days=30 * k)) for k in range(6)}
    for name, date_col in (
        ("ACTIVE_USER.csv", "last_login_mp_date_1"),
        ("MARKETPLACE_DATA.csv", "RECENCY_ML"),
    ):
        snap = pd.read_csv(churn_data.path / name, parse_dates=[SNAPSHOT_DATE, date_col])
        assert set(snap[SNAPSHOT_DATE]) == expected_dates
        assert not snap.duplicated([ID, SNAPSHOT_DATE]).any()
        known = snap[date_col].notna()
        # a snapshot describes only the days before its date
        assert (snap.loc[known, date_col] < snap.loc[known, SNAPSHOT_DATE]).all()
    # every user existing at the as-of date has a snapshot dated as-of; newer users are absent from older ones
    active = pd.read_csv(churn_data.path / "ACTIVE_USER.csv", parse_dates=[SNAPSHOT_DATE])
    per_date = active.groupby(SNAPSHOT_DATE)[ID].nunique().sort_index()
    assert per_date.iloc[-1] == churn_data.users and per_date.is_monotonic_increasing
    # balance two months ago in the latest snapshot is the previous snapshot's current balance
    money = pd.read_csv(churn_data.path / "DINERO_CUENTA.csv", parse_dates=[SNAPSHOT_DATE])
    latest = money[money[SNAPSHOT_DATE] == pd.Timestamp(churn_data.as_of)].set_index(ID)
    previous = money[
        money[SNAPSHOT_DATE] == pd.Timestamp(churn_data.as_of - dt.timedelta(days=30))
    ].set_index(ID)
    both = latest.index.intersection(previous.index)
    assert np.allclose(latest.loc[both, "PLATA_CUENTA_2"], previous.loc[both, "PLATA_CUENTA_1"])


def test_outcomes_carry_a_strong_calibrated_signal(churn_data):
    out = pd.read_csv(churn_data.path / OUTCOMES_FILE)
    assert len(out) == churn_data.users and out[ID].is_unique
    assert out["p_true"].between(0, 1).all() and set(out["active_next_60d"]) <= {0, 1}
    summary = churn_data.summary
    assert summary["oracle_auc"] == pytest.approx(roc_auc(out["active_next_60d"], out["p_true"]), abs=1e-3)
    assert summary["oracle_auc"] > 0.85
    assert 0.4 < summary["positive_rate"] < 0.8
    # the true probabilities are calibrated against the simulated realisation
    assert abs(out["p_true"].mean() - out["active_next_60d"].mean()) < 0.03
    assert 20 < summary["payments_per_user"] < 40


def test_closed_form_no_payment_probability_matches_the_matrix_exponential():
    from scipy.linalg import expm

    lam, kappa, rho = np.array([0.2, 0.01, 1.5]), np.array([0.01, 0.05, 0.001]), np.array([0.005, 0.02, 0.3])
    from_active, from_dormant = p_no_payment(lam, kappa, rho, 60.0)
    for i in range(3):
        m = np.array([[-(kappa[i] + lam[i]), kappa[i]], [rho[i], -rho[i]]])
        want = expm(m * 60.0) @ np.ones(2)
        assert from_active[i] == pytest.approx(want[0], rel=1e-9, abs=1e-12)
        assert from_dormant[i] == pytest.approx(want[1], rel=1e-9, abs=1e-12)


def test_roc_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # ties on purpose
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_shifted_scenario_changes_behaviour(tmp_path):
    base = simulate_sources(str(tmp_path / "base"), 2000, AS_OF, seed=3)
    shifted = simulate_sources(str(tmp_path / "shifted"), 2000, AS_OF, seed=3, scenario="shifted")
    assert shifted["payments_per_user"] < base["payments_per_user"]
    assert shifted["positive_rate"] < base["positive_rate"]
    spent = [pd.read_csv(tmp_path / d / "PAYMENTS.csv")["SPENT"].median() for d in ("base", "shifted")]
    assert spent[1] > 1.3 * spent[0]  # inflation
    with pytest.raises(ValueError, match="unknown scenario"):
        simulate_sources(str(tmp_path / "x"), 10, AS_OF, scenario="nope")


def test_writes_to_s3(s3_server, monkeypatch, tmp_path):
    from kpi.churn.sources import localize
    from kpi.settings import reload_settings

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    settings = reload_settings()
    try:
        url = "s3://kpi/tests/churn-sim"
        summary = simulate_sources(url, 300, AS_OF, seed=9, settings=settings)
        simulate_sources(str(tmp_path / "local"), 300, AS_OF, seed=9)
        assert fingerprints(url, settings) == fingerprints(str(tmp_path / "local"))
        local = localize(url, settings, dest=tmp_path / "down")
        assert (local / OUTCOMES_FILE).read_bytes() == (tmp_path / "local" / OUTCOMES_FILE).read_bytes()
        assert summary["rows"]["PAYMENTS.csv"] > 0
        # without dest: a temporary copy that lives as long as the process (Spark reads it lazily)
        code = ("from kpi.churn.sources import localize\n"
                f"folder = localize({url!r})\n"
                "assert (folder / 'PAYMENTS.csv').stat().st_size > 0\n"
                "print(folder)\n")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **s3_server.env()})
        assert res.returncode == 0, res.stderr[-2000:]
        copied = Path(res.stdout.strip().splitlines()[-1])
        assert copied.name.startswith("kpi-churn-sources-") and not copied.exists()
    finally:
        monkeypatch.undo()
        reload_settings()


def test_cli_prints_a_json_summary_with_the_oracle_auc(tmp_path):
    from kpi.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(
        app,
        [
            "churn",
            "simulate",
            "--out",
            str(tmp_path),
            "--users",
            "300",
            "--as-of",
            "2024-06-30",
            "--seed",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and 0.5 < summary["oracle_auc"] <= 1.0
    assert summary["rows"]["DEMOGRAFICOS.csv"] == 300
    bad = CliRunner().invoke(
        app, ["churn", "simulate", "--out", str(tmp_path), "--users", "0", "--as-of", "2024-06-30"]
    )
    assert bad.exit_code == 1
    assert "--users must be at least 1" in json.loads(bad.stdout.strip().splitlines()[-1])["error"]
