"""Score a user: look a customer up (the latest delivered score, its model version and the SHAP explanation of
their real features), then a "what if" form built from the champion's input schema."""

import math

import plotly.graph_objects as go
import streamlit as st
from app_support import champion_caption, require_champion, settings
from kpi.churn.inputs import records_frame
from kpi.dashboard.reports import StoreUnavailable, churn_score_of_user
from kpi.dashboard.scoring import InvalidInput, form_fields, form_frame, score_one

st.title("Score a user")
s = settings()
champ = require_champion(s)
champion_caption(champ)

try:
    fields = form_fields(champ.model.input_schema())
except ValueError as exc:
    st.error(f"The champion's input schema cannot drive a form: {exc}")
    st.stop()

UNKNOWN = "(unknown)"


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def show_explanation(row, key: str) -> None:
    """The champion's SHAP contributions for a one-row input: a signed bar chart and the table."""
    try:
        from kpi.churn.explain import explain_row

        expl = explain_row(champ.model, row)
    except Exception as exc:  # noqa: BLE001 - the score stands even if the explanation fails
        st.warning(f"No explanation for this prediction: {exc}")
        return
    expl = expl.reindex(expl["contribution"].abs().sort_values().index)
    colors = ["#d62728" if c < 0 else "#2ca02c" for c in expl["contribution"]]
    fig = go.Figure(go.Bar(x=expl["contribution"], y=[f"{f} = {_shown(v)}" for f, v in
                                                       zip(expl["feature"], expl["value"], strict=True)],
                           orientation="h", marker_color=colors))
    base = expl.attrs.get("base_value")
    fig.update_layout(height=max(300, 24 * len(expl)), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title=f"base value {base:.3f}" if isinstance(base, float) else None,
                      xaxis_title="contribution (log-odds)" if base is not None else "contribution")
    st.plotly_chart(fig, key=f"{key}_chart")
    st.dataframe(expl.sort_values("contribution", key=abs, ascending=False), hide_index=True, key=f"{key}_table")


def form_values(features: dict) -> tuple[dict, list[str]]:
    """A delivered user's features as form values: unknowns become the form's default, values outside the
    training range its nearest bound (the form only takes values inside it); returns the names changed."""
    values, adjusted = {}, []
    for spec in fields:
        value = features.get(spec.name)
        if spec.kind == "category":
            values[spec.name] = value if value in spec.categories else UNKNOWN
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)):
            values[spec.name], _ = spec.default, adjusted.append(spec.name)
            continue
        clamped = min(max(float(value), spec.minimum if spec.minimum is not None else float(value)),
                      spec.maximum if spec.maximum is not None else float(value))
        if clamped != float(value):
            adjusted.append(spec.name)
        values[spec.name] = int(clamped) if spec.kind == "int" else clamped
    return values, adjusted


# --- a customer's delivered score --------------------------------------------------------------------------
st.header("Look up a customer")
customer = st.text_input("Customer id (CUS_CUST_ID_BUY)", key="lookup_id",
                         help="The latest score the churn_scoring DAG delivered to prod.churn_scores.").strip()
if customer:
    delivered = None
    if not customer.isdigit():
        st.error(f"Customer id {customer!r} is not a whole number.")
    else:
        try:
            delivered = churn_score_of_user(s, int(customer))
        except StoreUnavailable as exc:
            st.error(f"Warehouse unavailable: {exc}")
        else:
            if delivered is None:
                st.info(f"No delivered score for customer {customer}: the churn_scoring DAG (or `kpi churn deliver "
                        "--data ... --as-of ...`) writes one for every user of the user base.")
    if delivered is not None:
        cols = st.columns(4)
        cols[0].metric("Delivered probability of a payment in the next 60 days", f"{delivered['p_active_60d']:.1%}")
        cols[1].metric("Model version", str(delivered["model_version"]))
        cols[2].metric("As of", str(delivered["as_of"]))
        cols[3].metric("Scored at", str(delivered["scored_at"])[:16],
                       help=f"{delivered['model_name']} v{delivered['model_version']}, {delivered['scored_at']}")
        features = delivered["features"]
        row = None
        try:
            row = records_frame(fields, [{f.name: features.get(f.name) for f in fields}], where=lambda _: "features")
        except InvalidInput as exc:
            st.warning(f"The champion (v{champ.version}) cannot read this user's stored features: {exc}")
        if row is not None:
            if int(delivered["model_version"]) != champ.version:
                st.warning(f"This score was delivered by version {delivered['model_version']}; the champion is now "
                           f"version {champ.version} (churn_scoring rescores the latest date after a promotion). "
                           f"The explanation below is the champion's on the same features: "
                           f"{score_one(champ.model, row):.1%}.")
            st.subheader("Why: SHAP contributions of the customer's features")
            show_explanation(row, "lookup_explanation")
            if st.button("Load these features into the what-if form", key="lookup_to_form"):
                values, adjusted = form_values(features)
                for name, value in values.items():
                    st.session_state[f"field.{name}"] = value
                st.session_state["lookup_adjusted"] = adjusted
                st.session_state.pop("last_score", None)

# --- what if ---------------------------------------------------------------------------------------------
st.header("What if")
adjusted = st.session_state.get("lookup_adjusted")
if adjusted:
    st.caption("Loaded from the customer above; set to the form's default or nearest training bound (the form "
               "takes values inside the training range only): " + ", ".join(adjusted))
with st.form("score_form"):
    st.caption("Defaults are typical training values; ranges come from the champion's training data.")
    cols = st.columns(3)
    values = {}
    for i, spec in enumerate(fields):
        col = cols[i % 3]
        key = f"field.{spec.name}"
        preset = key in st.session_state  # loaded from a customer: the widget takes its value from the state
        if spec.kind == "category":
            options = [*spec.categories, UNKNOWN]
            index = {} if preset else {"index": options.index(spec.default) if spec.default in options else 0}
            choice = col.selectbox(spec.name, options, key=key, **index)
            values[spec.name] = None if choice == UNKNOWN else choice
        elif spec.kind == "int":
            values[spec.name] = col.number_input(spec.name, step=1, help=f"whole number {spec.range_text}", key=key,
                                                 **({} if preset else {"value": int(spec.default)}))
        else:
            values[spec.name] = col.number_input(spec.name, format="%g", help=spec.range_text, key=key,
                                                 **({} if preset else {"value": float(spec.default)}))
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
        show_explanation(last["row"], "explanation")
elif last:
    st.info("A new champion was promoted since the last score: score again.")
