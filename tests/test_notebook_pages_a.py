"""'Open as notebook' on the Model, Masks, Compare and Attribution pages: each page in a non-default
state, its notebook executed in a fresh kernel, the notebook's headline JSON against what the page shows,
formatted as the page formats it."""
from __future__ import annotations

import test_page_notebooks
from devtools.apptest import page_app
from test_page_notebooks import NOTEBOOK_LABEL, metric, run_notebook
from ui.format import KIND_LABELS, metric_text

downloads = test_page_notebooks.downloads  # the fixture: the data each download button was given


def source(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def plotly_outputs(nb) -> int:
    return sum(1 for c in nb.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {}))


def test_model_page_notebook(downloads):
    at = page_app("model", "digits:cnn", 300)
    at.run()
    assert not at.exception, at.exception
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    assert "sparsekit.load_model('digits:cnn')" in source(nb)
    assert metric(at, "Parameters") == f"{head['params']:,}"
    assert metric(at, "In Linear/Conv layers") == f"{head['prunable_share']:.1%}"
    assert metric(at, "Weight memory") == f"{head['weight_mb']:,.1f} MB"
    assert metric(at, "Kind") == KIND_LABELS[head["kind"]] == "image classifier"
    quality = at.dataframe[0].value
    assert list(quality["shown"]) == [metric_text(v) for v in head["quality"].values()]
    assert any(s.value == f"Prunable layers ({head['prunable_layers']})" for s in at.subheader)
    assert plotly_outputs(nb) == 1
