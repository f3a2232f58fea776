"""Monitoring: churn drift (latest Evidently report, drift share over time), the churn scores delivered to the
warehouse (distribution and risk bands over time) and crypto data quality."""

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
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

st.header("Churn scores delivered")
distribution = guarded("Warehouse unavailable", reports.churn_score_distribution, s)
if distribution is not None:
    if distribution.empty:
        st.info("No churn score delivered yet: the churn_scoring DAG (daily, and after each promotion) or "
                "`kpi churn deliver --data ... --as-of ...` writes prod.churn_scores.")
    else:
        latest = distribution.iloc[-1]
        c1, c2, c3 = st.columns(3)
        c1.metric("Latest as-of date", str(latest["as_of"]))
        c2.metric("Users scored", f"{int(latest['users']):,}")
        c3.metric("Model version(s)", str(latest["model_versions"]))
        fig = go.Figure([
            go.Scatter(x=distribution["as_of"], y=distribution["p90"], line={"width": 0}, showlegend=False,
                       hoverinfo="skip"),
            go.Scatter(x=distribution["as_of"], y=distribution["p10"], fill="tonexty", line={"width": 0},
                       name="p10-p90", fillcolor="rgba(31,119,180,0.15)"),
            go.Scatter(x=distribution["as_of"], y=distribution["p75"], line={"width": 0}, showlegend=False,
                       hoverinfo="skip"),
            go.Scatter(x=distribution["as_of"], y=distribution["p25"], fill="tonexty", line={"width": 0},
                       name="p25-p75", fillcolor="rgba(31,119,180,0.35)"),
            go.Scatter(x=distribution["as_of"], y=distribution["p50"], mode="lines+markers", name="median"),
            go.Scatter(x=distribution["as_of"], y=distribution["mean"], mode="lines", name="mean",
                       line={"dash": "dot"}),
        ])
        fig.update_layout(title="Distribution of p_active_60d per as-of date", yaxis={"range": [0, 1]})
        st.plotly_chart(fig, key="score_distribution_chart")
        bands = guarded("Warehouse unavailable", reports.churn_risk_bands, s)
        if bands is not None and not bands.empty:
            from kpi.churn.delivery import RISK_BANDS

            labels = {name: f"{name} risk (p_active_60d {lo:g}-{hi:g})" for name, lo, hi in RISK_BANDS}
            fig = px.bar(bands.assign(band=bands["band"].map(labels)), x="as_of", y="share", color="band",
                         barmode="stack", title="Share of users by churn risk band",
                         color_discrete_sequence=["#d62728", "#ff7f0e", "#2ca02c"])
            fig.update_layout(yaxis={"tickformat": ".0%"})
            st.plotly_chart(fig, key="risk_band_chart")
            st.dataframe(bands.pivot_table(index="as_of", columns="band", values="share", fill_value=0.0),
                         key="risk_band_table")

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
