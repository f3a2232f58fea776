"""The churn workflow."""
