"""The progress callback every long call takes: ``progress(fraction, message)``.

``fraction`` runs from 0 to 1; ``message`` says what is being done. The app turns it into a
Streamlit progress bar, a notebook or terminal into a ``tqdm`` bar.
"""
from __future__ import annotations

from typing import Callable

ProgressFn = Callable[[float, str], None]
"""``progress(fraction done in [0, 1], message)``."""

__all__ = ["ProgressFn"]
