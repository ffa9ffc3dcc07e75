"""Streamlit-side helpers shared by the pages (widgets, caching, session state). Thin by design:
computation lives in ``sparsekit``."""
