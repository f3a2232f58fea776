"""Airflow DAG files: wiring only. Each task body is one call into `kpi`."""
