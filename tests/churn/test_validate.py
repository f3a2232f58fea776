"""Great Expectations validation of the churn sources: good data passes, each kind of break is named."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from kpi.churn.sources import ID
from kpi.churn.validate import SourceValidationError, assert_valid_sources, validate_sources
from kpi.settings import Settings


@pytest.fixture(scope="module")
def small_sources(tmp_path_factory) -> Path:
    """300 simulated users: enough rows for every rule, quick to validate."""
    from kpi.churn.simulate import simulate_sources

    out = tmp_path_factory.mktemp("small-sources")
    simulate_sources(str(out), 300, dt.date(2024, 6, 30), seed=11)
    return out


@pytest.fixture()
def settings(tmp_path) -> Settings:
    return Settings(env="test", home=tmp_path / "home", storage_url=(tmp_path / "storage").as_uri())


def _edit(folder: Path, name: str, change) -> None:
    frame = pd.read_csv(folder / name, dtype=str, keep_default_na=False)
    change(frame).to_csv(folder / name, index=False)


def test_simulated_sources_pass_and_results_are_stored(small_sources, settings):
    summary = validate_sources(str(small_sources), settings)
    assert summary["success"], summary["failures"]
    assert summary["failures"] == []
    assert set(summary["files"]) == {
        "PAYMENTS.csv",
        "ACTIVE_USER.csv",
        "DEMOGRAFICOS.csv",
        "DINERO_CUENTA.csv",
        "MARKETPLACE_DATA.csv",
    }
    assert all(f["rules"] >= 8 and f["failed_rules"] == 0 for f in summary["files"].values())
    assert summary["results_url"].startswith(settings.resolved_storage_url + "/churn/source-validation/")
    stored = json.loads(Path(summary["results_url"][len("file://") :]).read_text())
    assert stored["success"] is True and stored["data_version"] == summary["data_version"]
    # the GE validation results themselves, one suite per file
    assert stored["results"]["PAYMENTS.csv"]["success"] is True
    assert len(stored["results"]["PAYMENTS.csv"]["results"]) == summary["files"]["PAYMENTS.csv"]["rules"]


def test_reference_seed_data_passes(settings):
    from tests.conftest import reference_file

    folder = reference_file("seed-data", "PAYMENTS.csv").parent
    summary = validate_sources(str(folder), settings)
    assert summary["success"], summary["failures"]


def test_every_kind_of_break_is_reported_with_file_column_and_rule(small_sources, settings, tmp_path):
    broken = Path(shutil.copytree(small_sources, tmp_path / "broken"))

    def demograficos(df):
        df = pd.concat([df, df.iloc[[0]]])  # a duplicated user
        df.loc[df.index[1], "CARD_TYPE"] = "DIAMOND"
        df.loc[df.index[2], "AGE"] = "7"
        return df

    def payments(df):
        df.loc[0, "SPENT"] = "abc"
        df.loc[1, "SPENT"] = "-5"
        df.loc[2, ID] = "999999999999"  # nobody in the user base
        df.loc[3, "FECHA"] = "2024/06/01"
        df.loc[4, "DESCUENTO"] = ""
        return df

    def active_user(df):
        df.loc[0, "MAU_MP_1"] = "45"
        df.loc[1, "last_login_mp_date_1"] = df.loc[1, "SNAPSHOT_DATE"]  # not before its own snapshot
        return df

    def dinero(df):
        df.loc[0, "INVERSION"] = "Crypto"
        df.loc[1, "PLATA_CUENTA_1"] = "-10.0"
        return df

    def marketplace(df):
        return pd.concat([df, df.iloc[[0]]])  # the same user twice in one snapshot

    _edit(broken, "DEMOGRAFICOS.csv", demograficos)
    _edit(broken, "PAYMENTS.csv", payments)
    _edit(broken, "ACTIVE_USER.csv", active_user)
    _edit(broken, "DINERO_CUENTA.csv", dinero)
    _edit(broken, "MARKETPLACE_DATA.csv", marketplace)

    summary = validate_sources(str(broken), settings)
    assert not summary["success"]
    text = "\n".join(summary["failures"])
    expected = [
        "DEMOGRAFICOS.csv: column CUS_CUST_ID_BUY: ids must be unique",
        "DEMOGRAFICOS.csv: column CARD_TYPE: must be one of",
        "DEMOGRAFICOS.csv: column AGE: must be between 14 and 110",
        "PAYMENTS.csv: column SPENT: must be a number (1 rows, e.g. ['abc'])",
        "PAYMENTS.csv: column SPENT: must be between 0.0 and",
        "PAYMENTS.csv: column CUS_CUST_ID_BUY: ids must exist in the user base DEMOGRAFICOS.csv (1 rows",
        "PAYMENTS.csv: column FECHA: must be a date YYYY-MM-DD (1 rows, e.g. ['2024/06/01'])",
        "PAYMENTS.csv: column DESCUENTO: must not be empty (1 rows",
        "ACTIVE_USER.csv: column MAU_MP_1: must be between 0 and 31",
        "ACTIVE_USER.csv: column last_login_mp_date_1: must be before SNAPSHOT_DATE",
        "DINERO_CUENTA.csv: column INVERSION: must be one of",
        "DINERO_CUENTA.csv: column PLATA_CUENTA_1: must be between 0.0 and",
        "MARKETPLACE_DATA.csv: column CUS_CUST_ID_BUY: (CUS_CUST_ID_BUY, SNAPSHOT_DATE) must be unique",
    ]
    for reason in expected:
        assert reason in text, f"missing reason {reason!r} in:\n{text}"
    assert len(summary["failures"]) == len(expected), text
    # results of a failed run are stored too
    assert Path(summary["results_url"][len("file://") :]).exists()
    # and the guard raises with every reason in its message
    with pytest.raises(SourceValidationError) as caught:
        assert_valid_sources(str(broken), settings)
    assert all(reason in str(caught.value) for reason in expected)
    assert caught.value.failures == summary["failures"]


def test_missing_file_and_missing_column_are_named(small_sources, settings, tmp_path):
    broken = Path(shutil.copytree(small_sources, tmp_path / "broken"))
    (broken / "DINERO_CUENTA.csv").unlink()
    _edit(broken, "MARKETPLACE_DATA.csv", lambda df: df.drop(columns=["FREQUENCY_ML"]))
    summary = validate_sources(str(broken), settings)
    assert not summary["success"]
    assert any(f.startswith("DINERO_CUENTA.csv: file is missing") for f in summary["failures"])
    assert any(
        f.startswith("MARKETPLACE_DATA.csv: missing columns ['FREQUENCY_ML']") for f in summary["failures"]
    )
    assert summary["data_version"] is None
    # the files that are fine are still validated, and pass
    assert summary["files"]["PAYMENTS.csv"]["failed_rules"] == 0


def test_large_files_are_validated_on_a_systematic_sample(small_sources, settings):
    summary = validate_sources(str(small_sources), settings, max_rows=1000)
    assert summary["success"], summary["failures"]
    payments = summary["files"]["PAYMENTS.csv"]
    assert payments["sample_step"] > 1 and payments["rows"] > 1000
    # the user base is always read whole (the referential rule needs every id)
    assert summary["files"]["DEMOGRAFICOS.csv"]["sample_step"] == 1
