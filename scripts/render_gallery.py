"""Execute the notebook gallery in fresh kernels and render each to HTML, for people without Jupyter.

    .venv/bin/python scripts/render_gallery.py                 # full settings, HTML into notebooks/html/
    .venv/bin/python scripts/render_gallery.py --small         # the test suite's small settings
    .venv/bin/python scripts/render_gallery.py --only 02_attention

Prints one line per notebook with its execution time (the README's gallery table comes from here).
Needs nbconvert (requirements-notebook.txt; scripts/notebook.sh installs it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "notebooks"


def gallery(only: str | None = None) -> list[Path]:
    """The gallery notebooks (``NN_name.ipynb``), in order."""
    paths = sorted(p for p in GALLERY.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in paths if only is None or only in p.stem]


def execute(path: Path, *, small: bool, timeout: int = 1800):
    """The notebook at ``path``, executed in a fresh kernel started in the repository root."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("SPARSEKIT_GALLERY_SMALL")
    os.environ["SPARSEKIT_GALLERY_SMALL"] = "1" if small else "0"
    # Figures as HTML too (plotly.js embedded once per notebook), so the rendered page shows them.
    os.environ.setdefault("PLOTLY_RENDERER", "plotly_mimetype+notebook")
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("SPARSEKIT_GALLERY_SMALL", None)
        else:
            os.environ["SPARSEKIT_GALLERY_SMALL"] = env_before
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the test suite's small settings")
    parser.add_argument("--only", help="run the notebooks whose name contains this")
    parser.add_argument("--out", type=Path, default=GALLERY / "html", help="folder for the HTML files")
    args = parser.parse_args(argv)
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        print("error: nbconvert is missing; bash scripts/notebook.sh installs it (requirements-notebook.txt)",
              file=sys.stderr)
        return 2
    paths = gallery(args.only)
    if not paths:
        print(f"error: no gallery notebook matches {args.only!r}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    print(f"| notebook | seconds ({'small' if args.small else 'full'} settings, {os.cpu_count()} CPUs) |\n|---|---:|")
    for path in paths:
        start = time.perf_counter()
        nb = execute(path, small=args.small)
        seconds = time.perf_counter() - start
        body, _ = exporter.from_notebook_node(nb)
        (args.out / f"{path.stem}.html").write_text(body)
        print(f"| {path.name} | {seconds:.1f} |", flush=True)
    print(f"HTML in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
