"""The notebook tests use the dashboard tests' real stores (one trained champion per session)."""

from dashboard.conftest import churn_store, dash_db  # noqa: F401 - fixtures re-exported for this folder
