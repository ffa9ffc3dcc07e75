"""'Open as notebook' on the Model, Masks, Compare and Attribution pages: each page in a non-default
state, its notebook executed in a fresh kernel, the notebook's headline JSON against what the page shows,
formatted as the page formats it."""
from __future__ import annotations

import pytest
from devtools.apptest import page_app
from test_page_notebooks import NOTEBOOK_LABEL, metric, run_notebook, same
from sparsekit.recipes import rounded
from sparsekit.recipes.compare import compare_recipe
from sparsekit.sparsify import SparsifyConfig
from ui.format import KIND_LABELS, metric_text



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


def test_compare_page_notebook(downloads):
    at = page_app("compare", "digits:mlp", 300)
    at.run()
    at.multiselect(key="cmp_methods").set_value(["magnitude", "random"])
    at.multiselect(key="cmp_nm").set_value(["4:8"])
    at.multiselect(key="cmp_sparsity").set_value([60])
    at.run()
    if any(b.key == "cmp_run" for b in at.button):
        at.button(key="cmp_run").click().run()
    at.selectbox(key="cmp_perm_pattern").set_value("1:4").run()
    if any(b.key == "cmp_perm_run" for b in at.button):
        at.button(key="cmp_perm_run").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    code = source(nb)
    assert "cmp.sweep_configs(['magnitude', 'random'], [(4, 8)], [0.6])" in code
    assert "cmp.permuted_nm_row(model, 1, 4, max_seconds_per_layer=10.0)" in code
    assert head["metric"] == "accuracy" and head["settings"] == 4
    label = "held-out accuracy (%)"
    ranking = next(m.value for m in at.markdown if m.value.startswith("Dense:"))
    assert ranking == f"Dense: {metric_text(head['dense'])} ({label}). Best first:  \n" + "  \n".join(
        f"**{pattern}**: " + ", ".join(f"{method} {metric_text(value)}" for method, value in ranked)
        for pattern, ranked in head["best_first"].items())
    table = at.dataframe[0].value
    assert list(table.index) == list(head["table"]) == ["4:8", "unstructured 60%"]
    assert same({p: {m: rounded(v) for m, v in row.items()} for p, row in table.to_dict("index").items()}, head["table"])
    share = head["recovered_share"]
    assert metric(at, "Recovered share of the gap") == ("–" if share is None else f"{share:.1%}")
    assert metric(at, f"{label}, magnitude 1:4") == metric_text(head['plain'])
    assert metric(at, f"{label}, permuted") == metric_text(head['permuted'])
    layers = next(d.value for d in at.dataframe if "recovered_share" in d.value.columns)
    assert list(layers["layer"]) == head["permuted_layers"] and head["permuted_layers"]
    assert plotly_outputs(nb) == 2


def test_compare_notebook_before_the_sweep_runs():
    # A page whose sweep has not run (and whose permutation search was stopped): the notebook builds the
    # settings and says how to run them, and its headline holds only what the page shows then.
    recipe = compare_recipe("digits:mlp", ["wanda"], [(2, 4)], [0.5, 0.7], "accuracy", swept=False,
                            permutation_note="The search was stopped.")
    head, nb = run_notebook(recipe.to_ipynb())
    assert head == {"metric": "accuracy", "settings": 3}
    assert "cmp.compare(model, configs)" not in source(nb) and "permuted_nm_row" not in source(nb)


def test_attribution_page_notebook_digits(downloads):
    at = page_app("attribution", "digits:cnn", 300)
    at.run()
    at.radio(key="at_pattern").set_value("unstructured").run()
    at.slider(key="at_sparsity").set_value(60).run()
    at.selectbox(key="at_method").set_value("wanda").run()
    at.slider(key="at_steps").set_value(32).run()
    at.selectbox(key="at_image").set_value(3).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    code = source(nb)
    assert "config = SparsifyConfig(pattern='unstructured', sparsity=0.6, method='wanda')" in code
    assert "steps = 32" in code and "idx = 3" in code and "sparsekit.load_model('digits:cnn')" in code
    assert head["image"] == 3
    assert metric(at, "Correlation (this image)") == f"{head['correlation']:.3f}"
    assert metric(at, "Mean correlation (20 images)") == f"{head['mean_correlation']:.3f}"
    assert metric(at, "Top-10 pixel overlap (mean)") == f"{head['mean_top_overlap']:.0%}"
    assert metric(at, "Same prediction") == f"{head['same_prediction']:.0%}"
    assert any(f"within {head['max_abs_delta']:.2g} (largest error)" in c.value for c in at.caption)
    assert at.selectbox(key="at_image").format_func(3) == (
        f"#3: digit {head['label']} (dense says {head['explained_class']}, sparse says {head['sparse_prediction']})")
    assert plotly_outputs(nb) == 2


@pytest.mark.slow
def test_attribution_page_notebook_minilm(downloads):
    at = page_app("attribution", "minilm", 600)
    at.run()
    at.selectbox(key="at_nm").set_value("1:4").run()
    at.slider(key="at_steps").set_value(8).run()
    at.text_input(key="at_a").set_value("The cat sat on the warm mat.").run()
    at.text_input(key="at_b").set_value("A kitten rested on a rug.").run()
    at.slider(key="at_pairs").set_value(2).run()
    at.button(key="at_summary_run").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    code = source(nb)
    assert "config = SparsifyConfig(n=1)" in code and "steps = 8" in code
    assert "a = 'The cat sat on the warm mat.'" in code and "attr.DEFAULT_PAIRS[:2]" in code
    assert metric(at, "Similarity, dense") == f"{head['dense_similarity']:.3f}"
    sparse = next(m for m in at.metric if m.label == "Similarity, sparse")
    assert sparse.value == f"{head['sparse_similarity']:.3f}" and sparse.proto.delta == f"{head['similarity_change']:+.3f}"
    assert metric(at, "Token attribution correlation") == (
        "–" if head["correlation"] is None else f"{head['correlation']:.3f}")
    assert head["pairs"] == 2
    assert metric(at, "Mean correlation") == f"{head['mean_correlation']:.3f}"
    assert metric(at, "Top token agreement") == f"{head['top_token_agreement']:.0%}"
    assert metric(at, "Mean |similarity change|") == f"{head['mean_abs_similarity_change']:.3f}"
    assert plotly_outputs(nb) == 2
