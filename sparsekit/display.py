"""How the library's results show themselves in Jupyter: a compact HTML card, and ``.figure()``.

A result class mixes in ``Shown`` and implements ``summary_card()``, returning a ``Card``: a title, the
headline figures (label -> formatted value) and a small table. Jupyter calls ``_repr_html_``; ``repr()``
and ``print()`` give one short line built from the same card, so a result never prints a model or a
tensor. ``.figure()`` draws the plot people would rather look at, through the ``sparsekit.viz``
builder the class names in ``FIGURE``.

The library never imports ``sparsekit.viz``: plotly lives only there, and viz sits above the library
(its builders take these records). Instead viz hands its builders to this module when it is imported
(``register_figure_finder``: a function that finds a builder by name, importing only the figure module
that owns it; ``register_figures`` hands over builders themselves); ``figure()`` looks the named builder up
here (``figure_builder``), and until ``sparsekit.viz`` has been imported (``from sparsekit import viz``,
as every notebook of the gallery does) it says so.
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

MAX_ROWS = 10
"""Table rows shown in a card (the rest are counted in a footnote)."""
_FIGURES: dict[str, Callable[..., Any]] = {}
"""Figure builders by name, handed over (``register_figures``) or found (``register_figure_finder``)."""
_FINDERS: list[Callable[[str], Callable[..., Any] | None]] = []
"""Functions name -> builder or None, asked in order for a name not in ``_FIGURES``."""


def register_figures(builders: Mapping[str, Callable[..., Any]]) -> None:
    """Make ``builders`` (name -> figure function) available to ``Shown.figure`` (``sparsekit.viz`` calls
    this with its public builders when it is imported)."""
    for name, builder in builders.items():
        if not callable(builder):
            raise TypeError(f"figure builder {name!r} is not callable")
        _FIGURES[name] = builder


def register_figure_finder(finder: Callable[[str], Callable[..., Any] | None]) -> None:
    """Let ``finder(name) -> builder or None`` supply builders on demand (``sparsekit.viz`` does, so that a
    figure imports only its own module)."""
    if finder not in _FINDERS:
        _FINDERS.append(finder)


def figure_builder(name: str) -> Callable[..., Any] | None:
    """The registered builder called ``name`` (found and remembered on first use), or None."""
    builder = _FIGURES.get(name)
    if builder is None:
        for finder in _FINDERS:
            builder = finder(name)
            if builder is not None:
                if not callable(builder):
                    raise TypeError(f"figure builder {name!r} is not callable")
                _FIGURES[name] = builder
                break
    return builder


def fmt(value: Any, digits: int = 4) -> str:
    """A value as a card shows it: floats to ``digits`` significant digits, ints with thousands separators,
    None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.{digits}g}"
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
        return "×".join(str(v) for v in value)
    return str(value)


def percent(value: float | None, digits: int = 1) -> str:
    """``0.5`` -> ``50.0%``."""
    return "—" if value is None else f"{100 * value:.{digits}f}%"


@dataclass(frozen=True)
class Card:
    """What a result shows: the title, headline figures and a small table."""

    title: str
    headline: Mapping[str, str] = field(default_factory=dict)
    """label -> value, already formatted."""
    rows: Sequence[Mapping[str, Any]] = ()
    """Table rows (column -> value, formatted with ``fmt``)."""
    note: str = ""

    def text(self) -> str:
        """One line: the title and the headline figures."""
        parts = [f"{k} {v}" for k, v in self.headline.items()]
        return self.title + (": " + ", ".join(parts) if parts else "")

    def html(self, max_rows: int = MAX_ROWS) -> str:
        """The card as HTML (every value escaped)."""
        e = html.escape
        out = [f'<div class="sparsekit-card"><strong>{e(self.title)}</strong>']
        if self.headline:
            items = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in self.headline.items())
            out.append(f'<ul style="margin:0.3em 0">{items}</ul>')
        if self.rows:
            columns = list(dict.fromkeys(k for row in self.rows for k in row))
            head = "".join(f"<th>{e(c)}</th>" for c in columns)
            body = "".join("<tr>" + "".join(f"<td>{e(fmt(row.get(c)))}</td>" for c in columns) + "</tr>"
                           for row in self.rows[:max_rows])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            if len(self.rows) > max_rows:
                out.append(f"<small>… and {len(self.rows) - max_rows} more rows</small>")
        if self.note:
            out.append(f"<p><small>{e(self.note)}</small></p>")
        out.append("</div>")
        return "".join(out)


class Shown:
    """Mixin: ``_repr_html_``, a short ``repr`` and ``figure()`` from ``summary_card()`` and ``FIGURE``."""

    FIGURE: ClassVar[str] = ""
    """Name of the ``sparsekit.viz`` builder that draws this result (empty: no figure)."""
    FIGURE_INPUT: ClassVar[str] = ""
    """Attribute handed to the builder instead of the result itself (e.g. ``report``)."""

    def summary_card(self) -> Card:
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return self.summary_card().html()

    def __repr__(self) -> str:
        return f"<{self.summary_card().text()}>"

    def figure(self, **kwargs: Any) -> Any:
        """The plot of this result (a plotly ``Figure``), drawn by ``sparsekit.viz.<FIGURE>``."""
        if not self.FIGURE:
            raise TypeError(f"{type(self).__name__} has no figure")
        builder = figure_builder(self.FIGURE)
        if builder is None:
            raise RuntimeError(f"{type(self).__name__}.figure() draws with sparsekit.viz.{self.FIGURE}: import the "
                               "figures first (from sparsekit import viz; it needs plotly)")
        subject = getattr(self, self.FIGURE_INPUT) if self.FIGURE_INPUT else self
        return builder(subject, **kwargs)


__all__ = ["Card", "MAX_ROWS", "Shown", "figure_builder", "fmt", "percent", "register_figure_finder",
           "register_figures"]
