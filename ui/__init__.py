"""Streamlit-side helpers of the pages. Thin by design: computation lives in ``sparsekit``.

``ui/<page>.py`` holds the pieces of ``views/<page>.py`` that need one (forms, sections); the rest is
shared: ``cached`` (every ``st.cache_*`` wrapper of a library call), ``state`` (the sidebar model and
the shared store of sparsified models), ``widgets`` (the sparsity config form), ``saved_runs`` (the
saved-runs view of a run store), ``format``, ``long_jobs`` and ``preload``."""
