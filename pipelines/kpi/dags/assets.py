"""Airflow assets shared by the churn DAGs (wiring only: names, no logic).

``churn_sources`` is emitted by ``churn_data_watchdog`` when a source file's content changed;
``churn_drift`` by ``churn_drift_monitor`` when the drift share reaches ``KPI_CHURN_DRIFT_THRESHOLD``;
``churn_champion`` by ``churn_training`` when its promotion moved the champion alias. All are emitted
through an alias so that a run emits an event only when it has something to say; ``churn_training`` is
scheduled on either of the first two, ``churn_scoring`` (daily) also on ``churn_champion``.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, AssetAlias

CHURN_SOURCES = Asset(name="churn_sources", uri="churn_sources", group="churn")
CHURN_DRIFT = Asset(name="churn_drift", uri="churn_drift", group="churn")
CHURN_SOURCES_CHANGES = AssetAlias(name="churn_sources_changes")
CHURN_DRIFT_ALERTS = AssetAlias(name="churn_drift_alerts")
CHURN_CHAMPION = Asset(name="churn_champion", uri="churn_champion", group="churn")
CHURN_PROMOTIONS = AssetAlias(name="churn_promotions")

CHURN_DEFAULT_ARGS = {"owner": "kpi-churn", "retries": 2, "retry_delay": dt.timedelta(minutes=1)}
CHURN_START_DATE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
