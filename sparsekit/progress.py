"""The progress callback every long call takes: ``progress(fraction, message)``.

``fraction`` runs from 0 to 1; ``message`` says what is being done. The app turns it into a
Streamlit progress bar; in a notebook or a terminal a long call draws a ``tqdm.auto`` bar by default.

A long call's ``progress=`` argument (``ProgressArg``):

- ``True`` (the default of the public long calls): a ``tqdm.auto`` bar, shown once the call has run
  ``BAR_DELAY_S`` seconds (short calls print nothing);
- ``False`` or ``None``: silent (what the library passes to the calls it makes itself);
- a callable: ``progress(fraction, message)``, called as before.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Callable

ProgressFn = Callable[[float, str], None]
"""``progress(fraction done in [0, 1], message)``."""
ProgressArg = ProgressFn | bool | None
"""What a long call's ``progress=`` takes: True (a tqdm bar), False/None (silent), or a callback."""
BAR_DELAY_S = 2.0
"""A bar appears only after the call has run this long."""
STEPS = 1000
"""Resolution of the bar (it shows fractions, not counts)."""


@contextlib.contextmanager
def reporter(progress: ProgressArg, desc: str) -> Iterator[ProgressFn | None]:
    """The callback a long call reports to, for the duration of a ``with`` block.

    Args:
        progress: the call's ``progress=`` argument.
        desc: the bar's label (e.g. ``sparsify``).

    Yields:
        ``progress`` itself when it is a callable; None when it is False/None; else a callback that
        moves a ``tqdm.auto`` bar (closed when the block ends, also on an exception or Ctrl-C).
    """
    if callable(progress):
        yield progress
        return
    if progress is None or progress is False:
        yield None
        return
    if progress is not True:
        raise TypeError(f"progress must be True, False, None or a callable, got {type(progress).__name__}")
    from tqdm.auto import tqdm

    bar = tqdm(total=STEPS, desc=desc, delay=BAR_DELAY_S, leave=True, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def update(fraction: float, message: str) -> None:
        step = min(STEPS, max(0, round(float(fraction) * STEPS)))
        bar.set_postfix_str(message[:60], refresh=False)
        bar.update(step - bar.n)

    try:
        yield update
    finally:
        bar.close()


__all__ = ["BAR_DELAY_S", "ProgressArg", "ProgressFn", "reporter"]
