"""KPI Platform: crypto validate-before-load ETL and churn MLOps."""

__version__ = "0.1.0"
