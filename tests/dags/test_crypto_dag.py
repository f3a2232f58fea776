"""The crypto_events DAG: its timetable's dates (Airflow's own timetable API) and real runs with dag.test().

The runs use the real Postgres and a file:// landing prefix; Airflow runs the tasks with its own machinery.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys

import pytest

from tests.crypto.conftest import clean_crypto_tables, query


def _scheduler_timetable(monkeypatch, start: str):
    """The DAG parsed with KPI_CRYPTO_START_DATE=start, as the scheduler sees it (serialized and back)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    from tests.dags.conftest import DAGS_FOLDER

    monkeypatch.setenv("KPI_CRYPTO_START_DATE", start)
    bag = DagBag(dag_folder=str(DAGS_FOLDER / "crypto_events.py"), include_examples=False)
    assert bag.import_errors == {}
    return DagSerialization.from_dict(DagSerialization.to_dict(bag.get_dag("crypto_events")))


def _utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def test_the_run_firing_at_midnight_processes_the_day_that_just_ended(airflow_home, monkeypatch):
    from airflow.timetables.base import DataInterval, TimeRestriction
    from kpi.crypto.window import last_complete_day, run_day, window_bounds
    from kpi.settings import Settings

    dag = _scheduler_timetable(monkeypatch, "2026-03-01")
    timetable = dag.timetable
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=True)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    # the first run fires at 00:00 of the day after KPI_CRYPTO_START_DATE and processes that day
    assert first.run_after == _utc(2026, 3, 2)
    assert first.data_interval == DataInterval(_utc(2026, 3, 1), _utc(2026, 3, 2))
    assert first.logical_date == _utc(2026, 3, 1)
    assert last_complete_day(first.data_interval.end) == dt.date(2026, 3, 1)
    # Airflow gives a run a task instance only for the tasks whose start_date is not after the run's logical
    # date (DagRun.verify_integrity): the first run must get all of them, not finish "success" with none
    assert dag.start_date == _utc(2026, 3, 1)
    assert [t.task_id for t in dag.tasks if t.start_date > first.logical_date] == []
    # for a given time: after the run of 9 March, the next fires at 00:00 of 11 March for [10 March, 11 March)
    following = timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(_utc(2026, 3, 9), _utc(2026, 3, 10)), restriction=restriction)
    assert following.run_after == _utc(2026, 3, 11) and following.logical_date == _utc(2026, 3, 10)
    day = last_complete_day(following.data_interval.end)
    assert day == dt.date(2026, 3, 10)
    assert window_bounds(day, Settings(crypto_window_days=5)) == (dt.date(2026, 3, 6), dt.date(2026, 3, 10))
    # a manual run (the UI's "now", or an API trigger with a logical date) processes the last complete day
    for trigger, processed in ((_utc(2026, 3, 11), dt.date(2026, 3, 10)),
                               (_utc(2026, 3, 11, 10, 30), dt.date(2026, 3, 10)),
                               (_utc(2026, 3, 11, 23, 59), dt.date(2026, 3, 10))):
        interval = timetable.infer_manual_data_interval(run_after=trigger)
        assert last_complete_day(interval.end) == processed, trigger
        assert run_day(interval.end, trigger) == run_day(None, trigger) == processed, trigger
    assert run_day(first.data_interval.end, first.run_after) == dt.date(2026, 3, 1)
    with pytest.raises(ValueError, match="run_after"):
        run_day(None, None)


def _land(settings, tmp_path, last_day: dt.date, days: int = 1, **simulation) -> list[str]:
    """Simulated extracts of ``days`` days ending on ``last_day``, dropped into the landing prefix."""
    from kpi.crypto.landing import landing_url
    from kpi.crypto.simulate import simulate_extracts
    from kpi.storage import join, read_bytes, write_bytes

    clean_crypto_tables(settings.database_url)
    sim = simulate_extracts(last_day - dt.timedelta(days=days - 1), last_day, str(tmp_path / "src"), settings=settings,
                            **simulation)
    return [write_bytes(join(landing_url(settings), f.rsplit("/", 1)[1]), read_bytes(f, settings), settings)
            for f in sim["files"]]


@pytest.mark.slow
def test_a_dag_run_ingests_what_landed_and_publishes_the_window_of_the_day_before(airflow_home, kpi_env, tmp_path):
    from kpi.airflow_local import run_dag_once
    from kpi.crypto.landing import landing_url
    from kpi.storage import list_files

    _land(kpi_env, tmp_path, dt.date(2026, 1, 2), days=2, rows_per_day=150, anomaly_rate=0.02, seed=21)
    # the run that fires at 00:00 of 3 January
    run = run_dag_once("crypto_events", dt.date(2026, 1, 3))
    assert run["state"].endswith("success"), run
    assert all(s.endswith("success") for s in run["tasks"].values()) and len(run["tasks"]) == 7, run["tasks"]
    landed = run["xcom"]["ingest_landing"]
    assert len(landed["ingested"]) == 2 and landed["set_aside"] == [] and landed["rows"] > 0
    assert list_files(landing_url(kpi_env), kpi_env) == []  # both moved to processed/
    runs = query(kpi_env.database_url, "SELECT status, gate, window_start, window_end, raw_rows, valid, quarantined,"
                 " superseded, inserted, published, mode FROM dqm.dq_runs WHERE run_id = %s", (run["run_id"],))
    assert len(runs) == 1
    status, gate, start, end, raw_rows, valid, quarantined, superseded, inserted, published, mode = runs[0]
    assert (status, gate, mode) == ("published", "passed", "steps")
    assert (start, end) == (dt.date(2025, 12, 29), dt.date(2026, 1, 2))  # [D-4, D] with D = 2 January
    assert raw_rows == valid + quarantined + superseded and inserted == valid == published > 0
    prod = query(kpi_env.database_url, "SELECT count(*), max(purchase_date), min(last_run_id) FROM prod.bt_crypto_events")[0]
    assert prod == (valid, dt.date(2026, 1, 2), run["run_id"])
    clean_crypto_tables(kpi_env.database_url)


@pytest.mark.slow
def test_a_run_triggered_without_a_logical_date_processes_the_last_day_complete_when_triggered(
        airflow_home, kpi_env, tmp_path):
    # Airflow 3's UI and REST API may trigger a run with a null logical date: it has no data interval
    from kpi.airflow_local import load_dag, use_one_warm_execution_api

    _land(kpi_env, tmp_path, dt.date(2026, 1, 2), rows_per_day=100, anomaly_rate=0.0, seed=5)
    dag = load_dag("crypto_events")
    use_one_warm_execution_api()
    with contextlib.redirect_stdout(sys.stderr):  # Airflow 3.2.2 prints outlet events to stdout
        run = dag.test(logical_date=None, run_after=_utc(2026, 1, 3, 9, 30))
    assert run.logical_date is None and run.data_interval_end is None
    tasks = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
    assert all(state == "success" for state in tasks.values()) and len(tasks) == 7, tasks
    record = query(kpi_env.database_url, "SELECT logical_date, window_start, window_end, status, published"
                   " FROM dqm.dq_runs WHERE run_id = %s", (run.run_id,))
    assert record == [(dt.date(2026, 1, 2), dt.date(2025, 12, 29), dt.date(2026, 1, 2), "published", 100)]
    clean_crypto_tables(kpi_env.database_url)


@pytest.mark.slow
def test_a_file_set_aside_fails_the_run_after_the_good_ones_were_published(airflow_home, kpi_env, tmp_path):
    from kpi.airflow_local import run_dag_once
    from kpi.crypto.landing import landing_url
    from kpi.storage import list_files, read_bytes, write_bytes

    _land(kpi_env, tmp_path, dt.date(2026, 1, 1), rows_per_day=100, anomaly_rate=0.0, seed=4)
    write_bytes(landing_url(kpi_env) + "/photo_2026-01-01.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", kpi_env)
    run = run_dag_once("crypto_events", dt.date(2026, 1, 2))
    assert not run["state"].endswith("success"), run
    failed = {t for t, s in run["tasks"].items() if not s.endswith("success")}
    assert failed == {"landing_check"}, run["tasks"]  # the window itself went through
    status = query(kpi_env.database_url, "SELECT status, published FROM dqm.dq_runs WHERE run_id = %s",
                   (run["run_id"],))
    assert status == [("published", 100)]
    set_aside = run["xcom"]["ingest_landing"]["set_aside"]
    assert [f["file"].rsplit("/", 1)[1] for f in set_aside] == ["photo_2026-01-01.csv"]
    assert list_files(landing_url(kpi_env), kpi_env) == []  # the good file went to processed/, the bad one aside
    reason = read_bytes(set_aside[0]["moved_to"] + ".reason.txt", kpi_env).decode()
    assert "binary" in reason or "UTF-8" in reason
    clean_crypto_tables(kpi_env.database_url)


@pytest.mark.slow
def test_a_task_that_fails_marks_its_run_failed(airflow_home, kpi_env, tmp_path, monkeypatch):
    from kpi.airflow_local import run_dag_once
    from kpi.crypto import validation

    _land(kpi_env, tmp_path, dt.date(2026, 1, 1), rows_per_day=100, anomaly_rate=0.05, seed=4)
    real = validation.run_expectations

    def disagreeing(settings, run_id, day):
        outcome = real(settings, run_id, day)
        outcome["unexpected"]["site_id_unknown"] = outcome["unexpected"].get("site_id_unknown", 0) + 1
        return outcome

    monkeypatch.setattr(validation, "run_expectations", disagreeing)  # dag.test() runs the tasks in this process
    run = run_dag_once("crypto_events", dt.date(2026, 1, 2))
    assert run["tasks"]["validate"] == "failed" and run["tasks"]["publish"] == "upstream_failed", run["tasks"]
    record = query(kpi_env.database_url, "SELECT status, error, finished_at IS NOT NULL, validation FROM dqm.dq_runs"
                   " WHERE run_id = %s", (run["run_id"],))
    assert record[0][0] == "failed" and "disagree" in record[0][1] and record[0][2] is True
    assert record[0][3] == "failed"
    assert query(kpi_env.database_url, "SELECT count(*) FROM prod.bt_crypto_events")[0][0] == 0
    clean_crypto_tables(kpi_env.database_url)
