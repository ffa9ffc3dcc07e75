"""Development tools for the app's tests, benchmarks and scripts (not part of the served app):
``apptest`` drives one page with Streamlit's AppTest, ``served`` runs the whole app in a server of
its own on a free localhost port."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (where ``app.py`` is)."""
