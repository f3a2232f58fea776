"""The churn part of ``kpi demo``: two rounds of data through the four churn DAGs with ``dag.test()``.

Round 1 simulates the sources, the watchdog fires (and stays quiet on a second look), training promotes
the first champion and drift finds nothing. Round 2 replaces the sources with a shifted population a month
later: the watchdog fires on the changed files, drift crosses the threshold and emits ``churn_drift``, and
training evaluates the second model against the champion on the same holdout and decides. Each round ends
with that day's ``churn_scoring`` run, which delivers the champion's scores of every user to
``prod.churn_scores``. The demo plays the scheduler's part: it starts ``churn_training`` with the
``data_url``/``as_of`` the asset events carry, and ``churn_scoring`` as its daily schedule would.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from kpi.settings import Settings

DEMO_AS_OF = dt.date(2025, 6, 30)
SECOND_ROUND_DAYS = 30
DEMO_TRIALS = 4


def _asset_events(asset_name: str, since_id: int = 0) -> list[dict[str, Any]]:
    """Events of one asset newer than ``since_id`` (id, extra), oldest first."""
    import sqlalchemy as sa
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.settings import Session

    with Session() as session:
        rows = session.execute(
            sa.select(AssetEvent.id, AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == asset_name, AssetEvent.id > since_id).order_by(AssetEvent.id)
        ).all()
    return [{"id": r[0], **dict(r[1] or {})} for r in rows]


def _last_event_id() -> int:
    import sqlalchemy as sa
    from airflow.models.asset import AssetEvent
    from airflow.settings import Session

    with Session() as session:
        return int(session.scalar(sa.select(sa.func.coalesce(sa.func.max(AssetEvent.id), 0))))


def run_churn_demo(settings: Settings, users: int = 5000, trials: int = DEMO_TRIALS,
                   as_of: dt.date = DEMO_AS_OF, seed: int = 42) -> dict[str, Any]:
    """Two rounds of churn data through watchdog, training and drift DAGs; print and return a summary.

    Args:
        settings: settings with reachable stores (``local_services()`` provides them).
        users: users in each simulated round.
        trials: hyper-parameter search trials per training run (small keeps the demo short).
        as_of: the first round's date; the second round is ``SECOND_ROUND_DAYS`` later.
        seed: simulator seed.

    Returns:
        ``rounds`` (per round: watchdog, training decision and AUCs, drift share, scores delivered),
        ``champion_version``, ``data_url``, ``failed_runs`` (DAG runs that did not succeed) and ``seconds``.
    """
    from rich.console import Console
    from rich.table import Table

    from kpi.airflow_local import activate_airflow_home, prepare_airflow_home, run_dag_once
    from kpi.churn.registry import load_champion
    from kpi.churn.simulate import simulate_sources
    from kpi.churn.watchdog import watched_data_url

    console = Console()
    started = time.perf_counter()
    data_url = watched_data_url(settings)
    activate_airflow_home(prepare_airflow_home(settings.home_dir / "airflow"))
    runs: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []

    def dag(dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        result = run_dag_once(dag_id, conf=conf)
        runs.append(result)
        console.print(f"  {dag_id}: {result['state']} in {result['seconds']}s")
        return result

    for number, (scenario, day) in enumerate(
        [("baseline", as_of), ("shifted", as_of + dt.timedelta(days=SECOND_ROUND_DAYS))], start=1
    ):
        console.rule(f"[bold]churn round {number}[/bold]: {scenario} population, {users} users, as of {day}")
        simulated = simulate_sources(data_url, users, day, seed=seed + number, scenario=scenario,
                                     settings=settings)
        console.print(f"  simulated {simulated['rows']['PAYMENTS.csv']} payments into {data_url} "
                      f"(oracle AUC {simulated['oracle_auc']})")
        mark = _last_event_id()
        dag("churn_data_watchdog", {"data_url": data_url, "as_of": day.isoformat()})
        source_events = _asset_events("churn_sources", mark)
        quiet = None
        if number == 1:  # a second look at unchanged files must stay quiet
            mark_quiet = _last_event_id()
            dag("churn_data_watchdog", {"data_url": data_url, "as_of": day.isoformat()})
            quiet = len(_asset_events("churn_sources", mark_quiet))
        drift_run = None
        if number == 2:  # the monitor runs before retraining: it compares with the round-1 champion
            drift_run = dag("churn_drift_monitor", {"data_url": data_url, "as_of": day.isoformat()})
        drift_events = _asset_events("churn_drift", mark)
        training = None
        if source_events or drift_events:
            # what the scheduler does on these assets: start churn_training with the events' inputs
            latest = (source_events + drift_events)[-1]
            training = dag("churn_training", {"data_url": latest["data_url"], "as_of": latest["as_of"],
                                              "trials": trials})
        if number == 1:
            drift_run = dag("churn_drift_monitor", {"data_url": data_url, "as_of": day.isoformat()})
        # the day's scores of every user, by the champion after this round's decision
        scoring = dag("churn_scoring", {"data_url": data_url, "as_of": day.isoformat()})
        delivered = (scoring.get("xcom", {}).get("deliver_scores")) or {}
        decision = (training or {}).get("xcom", {}).get("evaluate_and_promote") or {}
        drift = (drift_run or {}).get("xcom", {}).get("measure_drift") or {}
        rounds.append({
            "round": number, "scenario": scenario, "as_of": day.isoformat(), "users": users,
            "watchdog_fired": bool(source_events),
            "changed_files": (source_events[-1]["changed_files"] if source_events else []),
            "watchdog_second_look_events": quiet,
            "drift_share": drift.get("drift_share"), "drift_detected": drift.get("drift_detected"),
            "drift_event": bool(drift_events), "drift_report": drift.get("report_url"),
            "training_state": (training or {}).get("state"),
            "model_version": (decision.get("training") or {}).get("model_version"),
            "decision": decision.get("decision"), "candidate_auc": decision.get("candidate_auc"),
            "champion_auc": decision.get("champion_auc"), "reason": decision.get("reason"),
            "oracle_auc": simulated["oracle_auc"],
            "scores_delivered": delivered.get("users"), "scored_by_version": delivered.get("model_version"),
        })

    champion = load_champion(settings)
    # one column per round keeps the table readable on an 80-column terminal
    table = Table(title="churn: watchdog -> drift monitor -> training -> scoring, per round")
    table.add_column("", justify="left")
    for row in rounds:
        table.add_column(f"round {row['round']}", justify="left")
    fields = [("scenario", "scenario"), ("as of", "as_of"), ("watchdog fired", "watchdog_fired"),
              ("changed files", "changed_files"), ("events on 2nd look", "watchdog_second_look_events"),
              ("drift share", "drift_share"), ("churn_drift emitted", "drift_event"),
              ("model version", "model_version"), ("decision", "decision"), ("candidate AUC", "candidate_auc"),
              ("champion AUC", "champion_auc"), ("oracle AUC", "oracle_auc"), ("why", "reason"),
              ("scores delivered", "scores_delivered"), ("scored by version", "scored_by_version")]
    for label, key in fields:
        table.add_row(label, *(_cell(len(r[key]) if key == "changed_files" else r[key]) for r in rounds))
    console.print(table)
    if champion is not None:
        console.print(f"champion: churn-model v{champion.version} (AUC {_cell(champion.auc)}); "
                      f"drift reports under {settings.resolved_storage_url}/drift-reports/; "
                      "scores in prod.churn_scores (`task serve` answers over HTTP)")
    failed = [r["run_id"] for r in runs if r["state"] != "success"]
    return {"data_url": data_url, "rounds": rounds,
            "champion_version": str(champion.version) if champion else None,
            "dag_runs": len(runs), "failed_runs": failed, "seconds": round(time.perf_counter() - started, 1)}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
