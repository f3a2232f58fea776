"""Batch scoring: upload users in feature shape or the five source CSVs, download the scored CSV."""

from datetime import date

import streamlit as st
from app_support import champion_caption, require_champion, settings
from kpi.dashboard.scoring import ID, form_fields, score_upload

st.title("Batch scoring")
champ = require_champion(settings())
champion_caption(champ)
fields = form_fields(champ.model.input_schema())

st.markdown(
    f"Upload **one feature-shaped CSV** (`{ID}` plus the {len(fields)} feature columns) or the **five source "
    "CSVs** (`PAYMENTS.csv`, `ACTIVE_USER.csv`, `DEMOGRAFICOS.csv`, `DINERO_CUENTA.csv`, "
    "`MARKETPLACE_DATA.csv`); features are then built as of the date below. Rows that cannot be scored are "
    "listed with the reason and do not stop the others."
)
uploads = st.file_uploader("CSV files", type=["csv"], accept_multiple_files=True, key="batch_upload")
as_of = st.date_input("As of (source-shaped uploads)", value=date.today(), key="batch_as_of")

if uploads:
    files = {u.name: u.getvalue() for u in uploads}
    result = score_upload(champ.model, fields, files, as_of)
    for problem in result.problems:
        st.error(f"Cannot score this upload: {problem}")
    if not result.problems:
        scored = result.scored.assign(model_version=str(champ.version))
        c1, c2 = st.columns(2)
        c1.metric("Scored rows", len(scored))
        c2.metric("Rejected rows", len(result.rejected))
        st.download_button("Download scored CSV", scored.to_csv(index=False).encode("utf-8"),
                           file_name=f"scored-v{champ.version}.csv", mime="text/csv", key="batch_download")
        st.dataframe(scored.head(200), hide_index=True, key="batch_scored")
        if len(result.rejected):
            st.warning(f"{len(result.rejected)} row(s) could not be scored:")
            st.dataframe(result.rejected, hide_index=True, key="batch_rejected")
