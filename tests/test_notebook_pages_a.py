"""'Open as notebook' on the Model, Masks, Compare and Attribution pages: each page in a non-default
state, its notebook executed in a fresh kernel, the notebook's headline JSON against what the page shows,
formatted as the page formats it."""
from __future__ import annotations

import test_page_notebooks
from devtools.apptest import page_app
from test_page_notebooks import NOTEBOOK_LABEL, metric, run_notebook
from sparsekit.sparsify import SparsifyConfig
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


def test_masks_page_notebook(downloads):
    config = SparsifyConfig(pattern="nm", n=1, m=4, method="wanda")
    at = page_app("masks", "digits:mlp", 300, config_json=config.to_json())
    at.run()
    at.selectbox(key="mask_layer").set_value("fc2").run()
    at.number_input(key="zoom_row").set_value(3).run()
    at.number_input(key="zoom_col").set_value(4).run()
    at.slider(key="zoom_size").set_value(10).run()
    at.number_input(key="grp_row").set_value(5).run()
    at.number_input(key="grp_start").set_value(2).run()
    at.radio(key="mb_pattern").set_value("unstructured").run()
    at.slider(key="mb_sparsity").set_value(60).run()
    at.selectbox(key="mb_method").set_value("random").run()
    at.number_input(key="mb_seed").set_value(7).run()
    assert not at.exception, at.exception
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    code = source(nb)
    assert "config = SparsifyConfig(n=1, method='wanda')" in code
    assert "other = SparsifyConfig(pattern='unstructured', n=1, sparsity=0.6, method='random', seed=7)" in code
    assert "layer = 'fc2'" in code and "row0, col0, size = 3, 4, 10" in code and "irow, start = 5, 2" in code
    assert head["layer"] == "fc2"
    assert any(f"Kept {head['kept']:,} of {head['numel']:,} ({head['kept_share']:.1%})." in c.value for c in at.caption)
    sad = next(m for m in at.metric if m.label == "SAD, this layer")
    assert sad.value == f"{head['sad_layer']:,}" and sad.proto.delta == f"{head['sad_layer_share']:.2%} of weights"
    total = next(m for m in at.metric if m.label == f"SAD, {head['common_layers']} layers")
    assert total.value == f"{head['sad_total']:,}" and total.proto.delta == f"{head['sad_total_share']:.2%} of weights"
    assert metric(at, "Kept in both") == f"{head['both_kept']:,}"
    kept = next(m for m in at.metric if m.label == "Kept, second mask")
    assert kept.value == f"{head['kept_b']:,}" and kept.proto.delta == f"{head['kept_b'] - head['kept']:+,}"
    table = at.dataframe[0].value.iloc[0]
    assert list(table) == [head["both_kept"], head["only_a"], head["only_b"], head["both_pruned"]]
    assert plotly_outputs(nb) == 7  # heatmap, histogram, profile, zoom, group bars, patterns, comparison
