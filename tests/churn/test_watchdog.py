"""The source watchdog: a change is a change of content, seen once; nothing else is a change."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from kpi import storage
from kpi.churn.sources import SOURCE_FILES
from kpi.churn.watchdog import check_sources, commit, load_state, state_url, watch


def _write_sources(settings, data_url: str, tag: str = "v1") -> None:
    for name in SOURCE_FILES.values():
        storage.write_text(storage.join(data_url, name), f"CUS_CUST_ID_BUY,X\n1,{tag}-{name}\n", settings)


@pytest.fixture()
def s3_env(kpi_env, s3_server, monkeypatch):
    """kpi_env with storage in the real S3 server under a fresh prefix."""
    from kpi.settings import reload_settings

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KPI_STORAGE_URL", f"s3://kpi/watchdog-test-{uuid.uuid4().hex[:8]}")
    yield reload_settings()
    reload_settings()


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_first_sight_is_a_change_then_nothing_until_content_changes(backend, request):
    settings = request.getfixturevalue("kpi_env" if backend == "file" else "s3_env")
    data_url = storage.join(settings.resolved_storage_url, "churn", "sources")
    _write_sources(settings, data_url)

    first = watch(settings, data_url)
    assert first["changed"] and first["first_seen"]
    assert first["changed_files"] == sorted(SOURCE_FILES.values())
    assert len(first["data_version"]) == 64

    second = watch(settings, data_url)
    assert not second["changed"] and second["changed_files"] == []
    assert second["hashed"] == []  # unchanged size + ETag/mtime: nothing was read again
    assert second["data_version"] == first["data_version"]

    if backend == "file":
        time.sleep(0.01)  # a distinct mtime
    storage.write_text(storage.join(data_url, "PAYMENTS.csv"), "CUS_CUST_ID_BUY,X\n1,v2\n2,v2\n", settings)
    third = watch(settings, data_url)
    assert third["changed"] and third["changed_files"] == ["PAYMENTS.csv"]
    assert third["previous_data_version"] == first["data_version"] != third["data_version"]

    state = load_state(settings)
    assert state[data_url]["data_version"] == third["data_version"]
    assert storage.exists(state_url(settings), settings)


def test_rewriting_identical_bytes_is_not_a_change(kpi_env):
    data_url = storage.join(kpi_env.resolved_storage_url, "src")
    _write_sources(kpi_env, data_url)
    watch(kpi_env, data_url)
    time.sleep(0.01)
    _write_sources(kpi_env, data_url)  # same bytes, new mtime
    check = watch(kpi_env, data_url)
    assert sorted(check["hashed"]) == sorted(SOURCE_FILES.values())  # re-read because mtime moved...
    assert not check["changed"]  # ...but the content is the same


def test_incomplete_sources_never_trigger_and_are_not_committed(kpi_env):
    data_url = storage.join(kpi_env.resolved_storage_url, "partial")
    _write_sources(kpi_env, data_url)
    os.remove(storage.filesystem(storage.join(data_url, "DEMOGRAFICOS.csv"), kpi_env)[1])
    check = check_sources(kpi_env, data_url)
    assert not check["changed"] and check["missing"] == ["DEMOGRAFICOS.csv"]
    commit(kpi_env, check)
    assert data_url not in load_state(kpi_env)


def test_detection_alone_does_not_move_the_state(kpi_env):
    data_url = storage.join(kpi_env.resolved_storage_url, "src")
    _write_sources(kpi_env, data_url)
    assert check_sources(kpi_env, data_url)["changed"]
    # no commit (e.g. the task failed before emitting): the change is seen again
    assert check_sources(kpi_env, data_url)["changed"]


def test_several_locations_are_tracked_independently(kpi_env):
    a = storage.join(kpi_env.resolved_storage_url, "a")
    b = storage.join(kpi_env.resolved_storage_url, "b")
    _write_sources(kpi_env, a, "a")
    _write_sources(kpi_env, b, "b")
    assert watch(kpi_env, a)["changed"]
    assert watch(kpi_env, b)["changed"]
    assert not watch(kpi_env, a)["changed"]
    assert set(load_state(kpi_env)) == {a, b}


def test_a_corrupt_state_file_is_reported_and_left_alone(kpi_env):
    storage.write_text(state_url(kpi_env), "{not json", kpi_env)
    with pytest.raises(ValueError, match="watchdog state .* is not valid JSON"):
        check_sources(kpi_env, storage.join(kpi_env.resolved_storage_url, "src"))
    assert storage.read_bytes(state_url(kpi_env), kpi_env) == b"{not json"
    storage.write_text(state_url(kpi_env), json.dumps([1, 2]), kpi_env)
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_state(kpi_env)
