"""'Open as notebook': each page's download, executed in a fresh kernel, prints the values the page shows.

The test sets a non-default state with AppTest, takes the notebook's bytes from the page's download
button (the button's data, captured as the page hands it to Streamlit), runs it with nbclient in a new
kernel, and compares its headline JSON with the numbers on the page, formatted as the page formats them.
"""
from __future__ import annotations

import math
import os

import pytest
from devtools import ROOT
from devtools.apptest import page_app
from sparsekit.recipes import Recipe, code, headline_line, literal, md, parse_headline, rounded

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_LABEL = "Open as notebook (.ipynb)"


def run_notebook(data: bytes) -> tuple[dict, object]:
    """Execute a notebook's bytes in a fresh kernel (cwd: the repository); its headline and the notebook."""
    nb = nbformat.reads(data.decode(), as_version=4)
    nbformat.validate(nb)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    text = "\n".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", [])
                     if out.get("output_type") == "stream")
    return parse_headline(text), nb


def same(a, b, rel: float = 1e-4) -> bool:
    """``a == b``, floats within ``rel`` (a fresh kernel may sum in another order: the last of the headline's
    6 digits can differ, far below what any page shows), recursively through lists and dicts."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or isinstance(a, (str, bool)) or isinstance(b, (str, bool)):
            return a == b
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    return a == b


def metric(at, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r} on the page: {[m.label for m in at.metric]}"
    return values[0]


# ---------------------------------------------------------------------------------------------------------
# The recipe machinery itself (no page, no kernel)


def test_same_tolerates_float_noise_only():
    assert same({"a": [0.0264718, None, "x"]}, {"a": [0.0264719, None, "x"]})
    assert not same({"a": [0.0264718]}, {"a": [0.0265]}) and not same([1.0], [1.0, 2.0])
    assert not same({"a": 1.0}, {"b": 1.0}) and same(float("nan"), float("nan")) and not same(1.0, None)


def test_rounded_and_headline_line():
    assert rounded(96.11111111) == 96.1111 and rounded(0.000123456789) == 0.000123457
    assert rounded({"a": [1.2345678, 2], "b": None, "c": "x", "d": True}) == {"a": [1.23457, 2], "b": None, "c": "x",
                                                                            "d": True}
    line = headline_line({"q": 1 / 3, "n": 7})
    assert parse_headline("noise\n" + line + "\n") == {"n": 7, "q": 0.333333}
    with pytest.raises(ValueError, match="no headline"):
        parse_headline("nothing here")
    with pytest.raises(TypeError):
        rounded(object())


def test_literal_refuses_what_does_not_read_back():
    assert literal((2, 4)) == "(2, 4)" and literal("a'b") == repr("a'b")
    for bad in (float("nan"), float("inf"), object(), [1, object()]):
        with pytest.raises(ValueError):
            literal(bad)


def test_recipe_notebook_shape(tmp_path):
    recipe = Recipe("Sparsify", "It did things.", "hf:some/dir", (md("## x"), code("headline = {'a': 1}")))
    nb = nbformat.reads(recipe.to_ipynb().decode(), as_version=4)
    nbformat.validate(nb)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds == ["markdown", "code", "markdown", "code", "code"]
    assert "sparsekit 0." in nb.cells[0].source and "SPARSEKIT_MODEL_ROOTS" in nb.cells[0].source
    assert nb.cells[-1].source == "print(headline_line(headline))"
    assert recipe.file_name() == "sparsify-hf-some-dir.ipynb"
    script = recipe.to_script()
    assert script.startswith("# # Sparsify, reproduced") and "headline = {'a': 1}" in script


def test_a_notebook_that_cannot_load_its_model_says_which_root(tmp_path):
    recipe = Recipe("Sparsify", "x", "hf:missing-model", (code("model = sparsekit.load_model('hf:missing-model')"),
                                                         code("headline = {}")))
    nb = nbformat.reads(recipe.to_ipynb().decode(), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    env = {k: v for k, v in os.environ.items() if k != "SPARSEKIT_MODEL_ROOTS"}
    old = os.environ.copy()
    os.environ.clear()
    os.environ.update(env)
    try:
        with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
            client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert "hf:missing-model" in str(err.value) or "missing-model" in str(err.value)
    assert "SPARSEKIT_MODEL_ROOTS" in str(err.value) or "model roots" in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# Pages


def test_sparsify_page_notebook(downloads):
    at = page_app("sparsify", "digits:cnn", 300)
    at.run()
    at.radio(key="sp_pattern").set_value("unstructured").run()
    at.slider(key="sp_sparsity").set_value(70).run()
    at.selectbox(key="sp_method").set_value("wanda").run()
    if any(b.key == "sp_apply" for b in at.button):
        at.button(key="sp_apply").click().run()
    assert not at.exception, at.exception
    data = downloads[NOTEBOOK_LABEL]
    head, nb = run_notebook(data)
    assert "SparsifyConfig(pattern='unstructured', sparsity=0.7, method='wanda')" in "".join(
        c.source for c in nb.cells)
    assert metric(at, "Kept in pruned layers") == f"{head['kept_fraction_pruned_layers']:.1%}"
    assert metric(at, "Kept in all Linear/Conv") == f"{head['kept_fraction_all_layers']:.1%}"
    assert metric(at, "Layers with weights removed") == f"{head['layers_with_zeros']} / {head['layers_total']}"
    label = next(m.label for m in at.metric if m.label not in ("Kept in pruned layers", "Kept in all Linear/Conv",
                                                                "Layers with weights removed"))
    (name, value), = [(k, v) for k, v in head["quality"].items()]
    assert metric(at, label) == f"{value:.4g}"
    figures = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) == 2
