"""Data layer of the dashboard and the notebooks: read-only views on the stores and scoring helpers.

Nothing here imports Streamlit, so the same functions serve the app, the notebooks and the tests.
"""
