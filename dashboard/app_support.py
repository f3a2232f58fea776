"""Streamlit glue shared by the pages: cached store reads and the messages shown when a store is down.

Store access itself lives in ``kpi.dashboard.reports``; this module only decides what is cached and for
how long. The champion alias is re-read every ``KPI_DASHBOARD_CHAMPION_TTL_SECONDS`` so a promotion shows
up without a restart, while a loaded model is kept per version (loading is the slow part).
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st
from kpi.dashboard.reports import StoreUnavailable
from kpi.redaction import redact_url
from kpi.settings import Settings, get_settings

NO_CHAMPION = (
    "No champion model yet: the registry has no version of `{name}` with the alias `{alias}`. "
    "Run `task demo` (or `kpi churn train --data ... --as-of ...`) to train and promote one."
)


def settings() -> Settings:
    """The process settings (the environment of `streamlit run`)."""
    return get_settings()


def _ttl_bucket(s: Settings) -> int:
    # a new bucket every TTL seconds makes the cached alias lookup expire on schedule
    return int(time.time() // s.dashboard_champion_ttl_seconds)


@st.cache_data(max_entries=64, show_spinner=False)
def _alias_version(uri: str, name: str, alias: str, bucket: int, _s: Settings) -> str | None:
    from kpi.dashboard.reports import champion_version

    return champion_version(_s)


@st.cache_resource(max_entries=4, show_spinner="Loading the champion model...")
def _champion_for_version(uri: str, name: str, alias: str, version: str, _s: Settings):
    from kpi.churn.registry import load_champion

    return load_champion(_s)


def champion(s: Settings | None = None):
    """The current champion (``model, version, run_id, trained_at, auc, ...``) or None.

    Raises:
        StoreUnavailable: MLflow is missing or unreachable, or the model cannot be loaded.
    """
    s = s or settings()
    uri = s.resolved_mlflow_uri
    version = _alias_version(uri, s.churn_model_name, s.churn_champion_alias, _ttl_bucket(s), s)
    if version is None:
        return None
    try:
        return _champion_for_version(uri, s.churn_model_name, s.churn_champion_alias, version, s)
    except ImportError as exc:
        raise StoreUnavailable(f"the churn model code is not available in this environment: {exc}") from exc
    except StoreUnavailable:
        raise
    except Exception as exc:
        raise StoreUnavailable(
            f"version {version} of `{s.churn_model_name}` could not be loaded from {redact_url(uri)}:"
            f" {s.redact(str(exc))}"
        ) from exc


def require_champion(s: Settings | None = None):
    """The champion, or stop the page with a clear message (store down, or nothing promoted yet)."""
    s = s or settings()
    try:
        champ = champion(s)
    except StoreUnavailable as exc:
        st.error(f"Model registry unavailable: {exc}")
        st.stop()
    if champ is None:
        st.info(NO_CHAMPION.format(name=s.churn_model_name, alias=s.churn_champion_alias))
        st.stop()
    return champ


def champion_caption(champ: Any) -> None:
    """Version, run, training date and AUC of the champion as a row of metrics."""
    cols = st.columns(4)
    cols[0].metric("Champion version", str(champ.version))
    cols[1].metric("AUC", f"{champ.auc:.3f}" if champ.auc is not None else "n/a")
    trained = getattr(champ, "trained_at", None)
    cols[2].metric("Trained", str(trained)[:10] if trained else "n/a", help=f"trained at {trained}")
    cols[3].metric("Run", str(champ.run_id)[:8], help=f"MLflow run {champ.run_id}")


def guarded(title: str, fn, *args, **kwargs):
    """Call ``fn``; on :class:`StoreUnavailable` show an error titled ``title`` and return None."""
    try:
        return fn(*args, **kwargs)
    except StoreUnavailable as exc:
        st.error(f"{title}: {exc}")
        return None
