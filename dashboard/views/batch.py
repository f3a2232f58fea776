"""Batch scoring: upload users in feature shape or the five source CSVs, download the scored CSV."""

from datetime import date

import streamlit as st
from app_support import champion_caption, require_champion, settings
from kpi.dashboard.scoring import ID, UploadLimits, form_fields, score_upload

REJECTS_SHOWN = 1000  # more would be a large table to ship to the browser; the download has them all

st.title("Batch scoring")
champ = require_champion(settings())
champion_caption(champ)
fields = form_fields(champ.model.input_schema())
limits = UploadLimits.from_settings(settings())

st.markdown(
    f"Upload **one feature-shaped CSV** (`{ID}` plus the {len(fields)} feature columns) or the **five source "
    "CSVs** (`PAYMENTS.csv`, `ACTIVE_USER.csv`, `DEMOGRAFICOS.csv`, `DINERO_CUENTA.csv`, "
    "`MARKETPLACE_DATA.csv`); features are then built as of the date below. Rows that cannot be scored are "
    f"listed with the reason and do not stop the others. At most {limits.max_mb} MB and "
    f"{limits.max_rows:,} rows per file."
)
uploads = st.file_uploader("CSV files", type=["csv"], accept_multiple_files=True, key="batch_upload",
                           max_upload_size=limits.max_mb)
as_of = st.date_input("As of (source-shaped uploads)", value=date.today(), key="batch_as_of")

if uploads:
    # the uploaded files are read in place, chunk by chunk: no copy of their bytes
    files = {u.name: u for u in uploads}
    result = score_upload(champ.model, fields, files, as_of, limits)
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
            shown = result.rejected.head(REJECTS_SHOWN)
            more = f" (the first {len(shown):,} are shown; the download has all)" if len(shown) < len(
                result.rejected) else ""
            st.warning(f"{len(result.rejected)} row(s) could not be scored{more}:")
            st.dataframe(shown, hide_index=True, key="batch_rejected")
            if more:
                st.download_button("Download rejected rows", result.rejected.to_csv(index=False).encode("utf-8"),
                                   file_name="rejected.csv", mime="text/csv", key="batch_rejected_download")
