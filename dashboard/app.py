"""KPI Platform dashboard: `streamlit run dashboard/app.py` (or `task dashboard` against the demo's stores).

The entry script only sets up navigation; each page lives in ``views/`` and reads the stores through
``kpi.dashboard`` (no Streamlit there), so notebooks and tests share the same data layer.
"""

import sys
from pathlib import Path

import streamlit as st
from kpi.redaction import install_log_scrubbing

# the server's log records (Streamlit, MLflow, botocore) never carry a credential of the environment
install_log_scrubbing()
# the pages import app_support from this folder whichever way the app is started (streamlit run, AppTest)
sys.path.insert(0, str(Path(__file__).resolve().parent))

st.set_page_config(page_title="KPI Platform", layout="wide")

pages = st.navigation(
    {
        "Churn": [
            st.Page("views/score.py", title="Score a user", url_path="score", default=True),
            st.Page("views/batch.py", title="Batch scoring", url_path="batch"),
            st.Page("views/model.py", title="Model", url_path="model"),
        ],
        "Operations": [
            st.Page("views/monitoring.py", title="Monitoring", url_path="monitoring"),
        ],
    }
)
pages.run()
