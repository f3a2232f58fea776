"""Score a user: a form built from the champion's input schema, the probability and its SHAP explanation."""

import plotly.graph_objects as go
import streamlit as st
from app_support import champion_caption, require_champion, settings
from kpi.dashboard.scoring import InvalidInput, form_fields, form_frame, score_one

st.title("Score a user")
champ = require_champion(settings())
champion_caption(champ)

try:
    fields = form_fields(champ.model.input_schema())
except ValueError as exc:
    st.error(f"The champion's input schema cannot drive a form: {exc}")
    st.stop()

UNKNOWN = "(unknown)"


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


with st.form("score_form"):
    st.caption("Defaults are typical training values; ranges come from the champion's training data.")
    cols = st.columns(3)
    values = {}
    for i, spec in enumerate(fields):
        col = cols[i % 3]
        if spec.kind == "category":
            options = [*spec.categories, UNKNOWN]
            choice = col.selectbox(spec.name, options, index=options.index(spec.default)
                                   if spec.default in options else 0, key=f"field.{spec.name}")
            values[spec.name] = None if choice == UNKNOWN else choice
        elif spec.kind == "int":
            values[spec.name] = col.number_input(spec.name, value=int(spec.default), step=1,
                                                 help=f"whole number {spec.range_text}", key=f"field.{spec.name}")
        else:
            values[spec.name] = col.number_input(spec.name, value=float(spec.default), format="%g",
                                                 help=spec.range_text, key=f"field.{spec.name}")
    submitted = st.form_submit_button("Score", type="primary")

if submitted:
    try:
        row = form_frame(fields, values)
    except InvalidInput as exc:
        st.session_state.pop("last_score", None)
        for problem in exc.problems:
            st.error(f"Invalid input, {problem}")
        st.stop()
    st.session_state["last_score"] = {"version": champ.version, "row": row,
                                      "probability": score_one(champ.model, row)}

last = st.session_state.get("last_score")
if last and last["version"] == champ.version:
    left, right = st.columns([1, 2])
    left.metric("Probability of a payment in the next 60 days", f"{last['probability']:.1%}")
    left.caption(f"scored by champion version {champ.version}")
    with right:
        st.subheader("Why: SHAP contributions")
        try:
            from kpi.churn.explain import explain_row

            expl = explain_row(champ.model, last["row"])
        except Exception as exc:  # noqa: BLE001 - the score stands even if the explanation fails
            st.warning(f"No explanation for this prediction: {exc}")
        else:
            expl = expl.reindex(expl["contribution"].abs().sort_values().index)
            colors = ["#d62728" if c < 0 else "#2ca02c" for c in expl["contribution"]]
            fig = go.Figure(go.Bar(x=expl["contribution"], y=[f"{f} = {_shown(v)}" for f, v in
                                                               zip(expl["feature"], expl["value"], strict=True)],
                                   orientation="h", marker_color=colors))
            base = expl.attrs.get("base_value")
            fig.update_layout(height=max(300, 24 * len(expl)), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                              title=f"base value {base:.3f}" if isinstance(base, float) else None,
                              xaxis_title="contribution (log-odds)" if base is not None else "contribution")
            st.plotly_chart(fig, key="explanation_chart")
            st.dataframe(expl.sort_values("contribution", key=abs, ascending=False), hide_index=True,
                         key="explanation_table")
elif last:
    st.info("A new champion was promoted since the last score: score again.")
