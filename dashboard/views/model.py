"""Model: the champion against earlier versions, promotion decisions, and the global SHAP summary."""

import plotly.express as px
import streamlit as st
from app_support import champion, guarded, settings
from kpi.dashboard.reports import global_shap, model_versions

st.title("Model")
s = settings()
versions = guarded("Model registry unavailable", model_versions, s)
if versions is None:
    st.stop()
if versions.empty:
    st.info(f"No version of `{s.churn_model_name}` is registered yet: run `task demo` or `kpi churn train`.")
    st.stop()

champ = guarded("Model registry unavailable", champion, s)
if champ is None:
    st.info(f"No version carries the alias `{s.churn_champion_alias}` yet; the versions below were not promoted.")

st.subheader("Versions")
metric_cols = [c for c in versions.columns if c not in ("version", "created_at", "run_id", "aliases",
                                                          "is_champion") and not c.startswith("tag.")]
# training logs the holdout AUC; older or foreign runs may call it differently
auc_col = next((c for c in ("holdout_roc_auc", "auc", "roc_auc") if c in versions.columns), None)
if auc_col:
    fig = px.line(versions, x="version", y=auc_col, markers=True, title="Holdout AUC over versions",
                  hover_data=["aliases", "run_id"])
    champions = versions[versions["is_champion"]]
    fig.add_scatter(x=champions["version"], y=champions[auc_col], mode="markers", name="champion",
                    marker={"size": 14, "symbol": "star"})
    fig.update_xaxes(dtick=1)
    st.plotly_chart(fig, key="auc_chart")
st.dataframe(versions[["version", "aliases", "created_at", *metric_cols]], hide_index=True, key="versions_table")

st.subheader("Promotion decisions")
decision_cols = [c for c in versions.columns if c.startswith("tag.promotion.") and c != "tag.promotion.guardrails"]
if decision_cols:
    decisions = versions[["version", *decision_cols]].rename(columns=lambda c: c.removeprefix("tag."))
    st.dataframe(decisions, hide_index=True, key="decisions_table")
else:
    st.caption("No promotion decision recorded on any version yet.")
other_tags = [c for c in versions.columns if c.startswith("tag.") and c not in decision_cols]
if other_tags:
    with st.expander("All version tags (training data version, guardrail figures, ...)"):
        st.dataframe(versions[["version", *other_tags]].rename(columns=lambda c: c.removeprefix("tag.")),
                     hide_index=True, key="tags_table")

if champ is not None:
    st.subheader(f"Global SHAP of the champion (version {champ.version})")
    shap_artifacts = guarded("SHAP artifacts unavailable", global_shap, s, champ.run_id)
    if shap_artifacts:
        left, right = st.columns([3, 2])
        if shap_artifacts["summary_png"]:
            left.image(shap_artifacts["summary_png"], caption="SHAP summary (shap/summary.png)")
        else:
            left.caption("The champion's run has no shap/summary.png.")
        table = shap_artifacts["mean_abs_shap"]
        if len(table):
            right.dataframe(table, hide_index=True, key="mean_abs_shap_table")
        else:
            right.caption("The champion's run has no shap/mean_abs_shap.json.")
