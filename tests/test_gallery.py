"""The notebook gallery: every notebook runs top to bottom in a fresh kernel (small settings through its
parameter cell: same code path), is stored without outputs, and renders to HTML."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import render_gallery  # noqa: E402

NOTEBOOKS = render_gallery.gallery()


def test_the_gallery_is_there():
    names = [p.stem for p in NOTEBOOKS]
    assert len(names) >= 6, names
    readme = (ROOT / "README.md").read_text()
    for name in names:  # README lists each notebook with what it teaches
        assert f"notebooks/{name}.ipynb" in readme, name


@pytest.mark.parametrize("path", NOTEBOOKS + [ROOT / "notebooks" / "quickstart.ipynb"], ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs are kept out of git"
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if path in NOTEBOOKS:
        assert len(params) == 1 and "SPARSEKIT_GALLERY_SMALL" in params[0].source, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_gallery_notebook_runs(path, digits_cache):
    nb = render_gallery.execute(path, small=True, timeout=900)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # Each notebook ends by printing what it found as one JSON line ("gallery result"), checked for shape.
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    lines = [line for line in text.splitlines() if line.startswith("GALLERY ")]
    assert lines, f"{path.name} printed no GALLERY line"
    result = json.loads(lines[-1][len("GALLERY "):])
    assert isinstance(result, dict) and result


def test_render_gallery_writes_html(tmp_path, digits_cache):
    first = NOTEBOOKS[0].stem
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_gallery.py"), "--small", "--only", first,
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    html = (tmp_path / f"{first}.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "sparsekit" in html
    assert f"| {first}.ipynb |" in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_gallery.py"), "--only", "no-such-notebook"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "no gallery notebook" in bad.stderr
