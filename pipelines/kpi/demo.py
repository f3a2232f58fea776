"""`kpi demo`: the whole platform on one machine, with real services started and stopped here."""

from __future__ import annotations

from kpi.local import local_services


def run_demo(days: int = 10, churn_users: int = 5000, skip_churn: bool = False) -> dict:
    """Start the embedded stores, run the crypto demo, then the churn demo; return both summaries."""
    from kpi.crypto.demo import run_crypto_demo

    summary: dict = {}
    with local_services() as settings:
        summary["crypto"] = run_crypto_demo(settings, days=days)
        if not skip_churn:
            from kpi.churn.demo import run_churn_demo

            summary["churn"] = run_churn_demo(settings, users=churn_users)
    summary["next"] = ("task dashboard  # the dashboard on http://127.0.0.1:8501 against these stores; "
                       "task serve  # the scoring API on http://127.0.0.1:8000")
    return summary
