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


# --------------------------------------------------------------------------------------------------------
# Concurrent runs: the state is recorded with a compare-and-swap, so one change fires once.
# --------------------------------------------------------------------------------------------------------

RACER = """
import json, os, sys, time
from pathlib import Path
from kpi.churn.watchdog import watch
from kpi.settings import get_settings
settings = get_settings()
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
print(json.dumps(watch(settings, sys.argv[1], claimed_by=sys.argv[3])), flush=True)
"""


def _race(data_url: str, tmp_path, runs: int, tag: str) -> list[dict]:
    """``runs`` watchdog processes released at one instant over the same sources; their results."""
    import subprocess
    import sys

    go = tmp_path / f"go-{tag}"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, data_url, str(go), f"{tag}-run-{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(runs)]
    for proc in procs:  # every racer has imported everything before the start
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_two_runs_that_both_saw_one_change_record_and_announce_it_once(backend, request):
    """The interleaving that lost updates: both check before either commits."""
    settings = request.getfixturevalue("kpi_env" if backend == "file" else "s3_env")
    data_url = storage.join(settings.resolved_storage_url, "churn", "sources")
    _write_sources(settings, data_url)
    first, second = check_sources(settings, data_url), check_sources(settings, data_url)
    assert first["changed"] and second["changed"]  # both saw it...
    assert commit(settings, first) is True
    assert commit(settings, second) is False  # ...only one record holds
    again = watch(settings, data_url)  # what the loser does next: look again
    assert not again["changed"] and again["data_version"] == first["data_version"]


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_concurrent_watchdog_processes_fire_exactly_once_per_change(backend, request, tmp_path):
    settings = request.getfixturevalue("kpi_env" if backend == "file" else "s3_env")
    data_url = storage.join(settings.resolved_storage_url, "churn", "sources")
    for round_no in range(3):
        _write_sources(settings, data_url, f"v{round_no}")
        results = _race(data_url, tmp_path, runs=4, tag=f"r{round_no}")
        fired = [r for r in results if r["changed"]]
        assert len(fired) == 1, results
        assert {r["data_version"] for r in results} == {fired[0]["data_version"]}
    assert load_state(settings)[data_url]["data_version"] == fired[0]["data_version"]


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_location_recorded_by_another_run_meanwhile_does_not_block_this_one(backend, request):
    settings = request.getfixturevalue("kpi_env" if backend == "file" else "s3_env")
    a = storage.join(settings.resolved_storage_url, "a")
    b = storage.join(settings.resolved_storage_url, "b")
    _write_sources(settings, a, "a")
    _write_sources(settings, b, "b")
    check_a = check_sources(settings, a)
    assert watch(settings, b)["changed"]  # the state object changed under check_a...
    assert commit(settings, check_a) is True  # ...but not its location: the write is retried, both kept
    assert set(load_state(settings)) == {a, b}


def test_a_retried_run_announces_its_own_recorded_change_again(kpi_env):
    data_url = storage.join(kpi_env.resolved_storage_url, "src")
    _write_sources(kpi_env, data_url)
    first = watch(kpi_env, data_url, claimed_by="manual__1")
    retry = watch(kpi_env, data_url, claimed_by="manual__1")  # committed, then failed before its event
    other = watch(kpi_env, data_url, claimed_by="scheduled__2")
    assert first["changed"] and not first["redelivered"]
    assert retry["changed"] and retry["redelivered"] and retry["changed_files"] == first["changed_files"]
    assert not other["changed"]


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_conditional_write_refuses_a_stale_version_and_a_second_create(backend, request):
    settings = request.getfixturevalue("kpi_env" if backend == "file" else "s3_env")
    url = storage.join(settings.resolved_storage_url, "cas", "doc.json")
    assert storage.read_versioned(url, settings) == (None, None)
    storage.write_if_unchanged(url, b"one", None, settings)
    with pytest.raises(storage.WriteConflict):
        storage.write_if_unchanged(url, b"two", None, settings)  # created meanwhile
    data, version = storage.read_versioned(url, settings)
    assert data == b"one"
    storage.write_if_unchanged(url, b"two", version, settings)
    with pytest.raises(storage.WriteConflict):
        storage.write_if_unchanged(url, b"three", version, settings)  # changed since read
    assert storage.read_versioned(url, settings)[0] == b"two"
