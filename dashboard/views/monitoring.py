"""Monitoring: churn drift (latest Evidently report, drift share over time) and crypto data quality."""

import pandas as pd
import plotly.express as px
import streamlit as st
from app_support import guarded, settings
from kpi.dashboard import reports

OUTCOME_COLOURS = {"published": "#2ca02c", "gate failed": "#d62728", "failed": "#8c564b", "reaped": "#7f7f7f",
                   "stalled": "#ff7f0e", "running": "#1f77b4"}

st.title("Monitoring")
s = settings()

st.header("Churn feature drift")
history = guarded("Drift reports unavailable", reports.drift_history, s)
if history is not None:
    if history.empty:
        st.info("No drift report yet: `kpi churn drift --data ... --as-of ...` (or `task demo`) writes one "
                f"under {s.resolved_storage_url}/{reports.DRIFT_REPORTS_DIR}/.")
    else:
        fig = px.line(history, x="as_of", y="drift_share", markers=True, title="Share of drifted features")
        fig.add_hline(y=s.churn_drift_threshold, line_dash="dash",
                      annotation_text=f"retraining threshold {s.churn_drift_threshold:g}")
        st.plotly_chart(fig, key="drift_chart")
        st.dataframe(history.drop(columns=["report_url"]), hide_index=True, key="drift_table")
    latest = guarded("Drift report unavailable", reports.latest_drift_report, s)
    if latest:
        as_of, html = latest
        with st.expander(f"Latest Evidently report ({as_of})", expanded=True):
            # the report is our own pipeline's output from our own storage, not user input
            st.iframe(html, height=900)

st.header("Crypto data quality")
runs = guarded("Warehouse unavailable", reports.crypto_dq_runs, s)
if runs is not None:
    if runs.empty:
        st.info("No crypto validation run yet: `kpi crypto run --date YYYY-MM-DD` (or `task demo`) records one.")
    else:
        gates = guarded("Warehouse unavailable", reports.crypto_gate_results, s)
        if gates is None:
            st.stop()
        st.subheader("Gate results")
        last = runs.iloc[0]
        c1, c2, c3 = st.columns(3)
        c1.metric("Last run", str(last["logical_date"]), help=str(last["run_id"]))
        c2.metric("Outcome", str(last["outcome"]), help=f"status {last['status']}, last step {last['last_step']}")
        c3.metric("Reject share", f"{last['reject_share']:.2%}" if pd.notna(last["reject_share"]) else "n/a",
                  help=f"threshold {last['reject_threshold']}")
        fig = px.bar(gates, x="logical_date", y="reject_share", color="outcome",
                     color_discrete_map=OUTCOME_COLOURS,
                     title="Reject share per day against the publication threshold (latest run per day)")
        fig.add_hline(y=s.crypto_reject_threshold, line_dash="dash",
                      annotation_text=f"threshold {s.crypto_reject_threshold:g}")
        st.plotly_chart(fig, key="gate_chart")
        troubled = runs[runs["outcome"].isin(["failed", "reaped", "stalled"])]
        for _, run in troubled.iterrows():
            st.error(f"Run {run['run_id']} ({run['logical_date']}) {run['outcome']} after its {run['last_step']} "
                     f"step: {run['error'] or 'no step touched it since ' + str(run['last_step_at'])}")
        st.subheader("Last runs")
        st.dataframe(runs, hide_index=True, key="dq_runs_table")
    rejects = guarded("Warehouse unavailable", reports.crypto_rejects_per_reason_day, s)
    if rejects is not None and not rejects.empty:
        st.subheader("Rejected rows per reason per day")
        fig = px.bar(rejects, x="day", y="rejects", color="reason", barmode="stack")
        st.plotly_chart(fig, key="rejects_chart")
        st.dataframe(rejects.pivot_table(index="day", columns="reason", values="rejects", fill_value=0),
                     key="rejects_table")
        with st.expander("Rejected rows as received"):
            examples = guarded("Warehouse unavailable", reports.crypto_reject_examples, s)
            if examples is not None:
                st.dataframe(examples, hide_index=True, key="reject_examples")
    elif rejects is not None:
        st.caption("No rejected rows recorded.")
