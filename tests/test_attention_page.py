"""The Attention page through AppTest: figures carry the captured attention and the pattern,
bad inputs get clear messages, a click on the head grid picks the head, the main choices live in
the URL, the per-head search shows its plan."""
import json

import numpy as np
import pytest

import sparsekit
from sparsekit.attention import capture_attention
from sparsekit.models.digits import digits_split
from sparsekit.viz.attention import attention_heatmap
from ui.attention import selected_head
from devtools.apptest import decode, figures, page_app

TIMEOUT = 300


def run(source, **state):
    at = page_app("attention", source, TIMEOUT, **state)
    at.run()
    assert not at.exception, at.exception
    return at


def titled(at, words):
    return next(f for f in figures(at) if words in json.dumps(f["layout"].get("title")))


def a_shape_keep(n, sink=4, local=8):
    """The default pattern (A-shape, sink 4, local 8) by a plain loop."""
    return np.array([[j < sink or abs(i - j) < local for j in range(n)] for i in range(n)])


def kept_mass(probs, keep):
    """Mean over queries of the attention mass inside ``keep``, by plain loops."""
    n = probs.shape[0]
    return sum(sum(probs[i, j] for j in range(n) if keep[i, j]) for i in range(n)) / n


@pytest.fixture(scope="module")
def vit_capture():
    vit = sparsekit.load_model("digits:vit")
    return capture_attention(vit, digits_split().x_test[3:4])


@pytest.fixture(scope="module")
def minilm():
    return sparsekit.load_model("minilm")


def test_vit_heatmap_pattern_and_recall_grid(vit_capture):
    at = run("digits:vit", att_image=3)
    assert not at.error, [e.value for e in at.error]
    at.selectbox(key="att_layer").set_value(1).run()
    at.selectbox(key="att_head").set_value(2).run()
    heat, grid = titled(at, "layer 1 ("), titled(at, "mass kept")
    probs = vit_capture.probs[1, 2].numpy()
    assert np.allclose(decode(heat["data"][0]["z"]), probs, atol=1e-6)
    assert heat["data"][0]["x"][:2] == ["0 CLS", "1 r0c0"]
    keep = a_shape_keep(17)
    dropped = decode(heat["data"][1]["z"])
    assert np.array_equal(np.isnan(dropped), keep)
    # Recall grid: each cell is the kept attention mass, recomputed here for one head.
    z = decode(grid["data"][0]["z"])
    want = float((probs * keep).sum(1).mean())
    assert z.shape == (2, 4) and z[1, 2] == pytest.approx(want, abs=1e-5)
    recall = next(m for m in at.metric if m.label == "Recall, this head")
    assert recall.value == f"{want:.1%}"
    assert len(at.get("download_button")) == 5  # metrics, head, pattern, quality, notebook


def test_head_grid_marks_the_current_head_and_hovers_the_mass_lost(vit_capture):
    at = run("digits:vit", att_image=3, att_layer=1, att_head=3)
    grid = titled(at, "mass kept")
    rect = grid["layout"]["shapes"][0]
    assert rect["type"] == "rect"
    assert (rect["x0"], rect["x1"], rect["y0"], rect["y1"]) == (2.5, 3.5, 0.5, 1.5)
    cells = grid["data"][1]
    keep = a_shape_keep(17)
    for k, (x, y) in enumerate(zip(cells["x"], cells["y"])):
        lost = 1.0 - kept_mass(vit_capture.probs[y, x].double().numpy(), keep)
        assert cells["customdata"][k][1] == pytest.approx(lost, abs=1e-5), (y, x)
    assert sorted(zip(cells["y"], cells["x"])) == [(li, hi) for li in range(2) for hi in range(4)]
    assert "mass lost" in cells["hovertemplate"]


def test_click_on_the_head_grid_selects_that_head(vit_capture):
    at = run("digits:vit", att_image=3)
    # What st.plotly_chart(on_select="rerun") stores after a click on the cell of layer 1, head 3.
    at.session_state["att_grid"] = {"selection": {"points": [{"curve_number": 1, "point_index": 7, "x": 3, "y": 1}],
                                                  "point_indices": [7], "box": [], "lasso": []}}
    at.run()
    assert not at.exception and not at.error
    assert (at.selectbox(key="att_layer").value, at.selectbox(key="att_head").value) == (1, 3)
    heat = titled(at, "layer 1 (")
    assert np.allclose(decode(heat["data"][0]["z"]), vit_capture.probs[1, 3].numpy(), atol=1e-6)
    rect = titled(at, "mass kept")["layout"]["shapes"][0]
    assert (rect["x0"], rect["y0"]) == (2.5, 0.5)
    # The pickers stay usable: the same click seen again does not take the head back.
    at.selectbox(key="att_head").set_value(0).run()
    assert (at.selectbox(key="att_layer").value, at.selectbox(key="att_head").value) == (1, 0)


def test_selected_head_mapping():
    def sel(*points):
        return {"selection": {"points": [dict(zip("xy", p)) for p in points], "point_indices": [], "box": [],
                              "lasso": []}}

    assert selected_head(sel((3, 1)), 2, 4) == (1, 3)
    assert selected_head(sel((0, 0), (2, 1)), 2, 4) == (1, 2)  # the last click wins
    assert selected_head(sel((4, 0)), 2, 4) is None  # head outside the grid
    assert selected_head(sel((1, 2)), 2, 4) is None  # layer outside the grid
    assert selected_head(sel((1.5, 0)), 2, 4) is None
    assert selected_head(sel(("a", 0)), 2, 4) is None
    assert selected_head(sel(), 2, 4) is None
    assert selected_head(None, 2, 4) is None
    assert selected_head({"selection": {}}, 2, 4) is None


def test_heatmap_is_square_and_labels_every_token_when_short():
    rng = np.random.default_rng(0)
    for n, every in ((21, True), (48, True), (100, False)):
        probs = rng.random((n, n))
        probs /= probs.sum(1, keepdims=True)
        tokens = [f"t{i}" for i in range(n)]
        layout = json.loads(attention_heatmap(probs, tokens, probs > 0.5 / n).to_json())["layout"]
        assert layout["yaxis"]["scaleanchor"] == "x" and layout["yaxis"].get("scaleratio", 1) == 1
        labels = [f"{i} t{i}" for i in range(n)]
        for axis in ("xaxis", "yaxis"):
            if every:
                assert layout[axis]["tickmode"] == "array" and layout[axis]["tickvals"] == labels
            else:
                assert "tickvals" not in layout[axis]


def test_url_opens_the_view(vit_capture):
    at = page_app("attention", "digits:vit", TIMEOUT, att_image=3)
    # Selectboxes keep their displayed label in the URL; numbers their value.
    at.query_params.update({"att_p_name": "Sliding window", "att_p_sliding_window_window": "3", "att_layer": "1",
                            "att_head": "2", "att_combine": "or (keep where either keeps)",
                            "att_q_name": "Vertical stripe (Sparse-vDiT)"})
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="att_p_name").value == "sliding_window"
    assert at.number_input(key="att_p_sliding_window_window").value == 3
    heat = titled(at, "layer 1 (")
    assert np.allclose(decode(heat["data"][0]["z"]), vit_capture.probs[1, 2].numpy(), atol=1e-6)
    keep = np.array([[abs(i - j) <= 3 or j == 0 for j in range(17)] for i in range(17)])
    assert np.array_equal(np.isnan(decode(heat["data"][1]["z"])), keep)


def test_window_larger_than_the_sequence_and_combination():
    at = run("digits:vit")
    at.selectbox(key="att_p_name").set_value("sliding_window").run()
    at.number_input(key="att_p_sliding_window_window").set_value(40).run()
    assert any("window 40 is larger than the sequence (17 tokens)" in e.value for e in at.error)
    assert not at.get("plotly_chart")
    at.number_input(key="att_p_sliding_window_window").set_value(2).run()
    at.selectbox(key="att_combine").set_value("or").run()
    at.text_input(key="att_q_vertical_stripe_columns").set_value("0").run()
    assert not at.error, [e.value for e in at.error]
    heat = titled(at, "grey = dropped")
    keep = np.array([[abs(i - j) <= 2 or j == 0 for j in range(17)] for i in range(17)])
    assert np.array_equal(np.isnan(decode(heat["data"][1]["z"])), keep)
    assert "sliding_window(window=2) | vertical_stripe(columns=0)" in " ".join(c.value for c in at.caption)


def test_search_results_and_zero_budget():
    at = run("digits:vit", att_calib=8)
    at.button(key="att_search").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    compare = at.dataframe[-2].value
    assert list(compare["setting"]) == ["dense", "per-head plan", "uniform"]
    assert compare["calibration density"].iloc[1] <= 0.30
    assert compare["calibration density"].iloc[2] <= compare["calibration density"].iloc[1] + 1e-12
    plan_fig = titled(at, "chosen pattern per head")
    assert decode(plan_fig["data"][0]["z"]).shape == (2, 4)
    rows = at.dataframe[-1].value
    assert len(rows) == 8 and (rows["density"] <= 0.30).all()
    assert len(at.get("download_button")) == 7  # and the notebook
    at.number_input(key="att_budget").set_value(0.0).run()
    at.button(key="att_search").click().run()
    assert any("budget must be above 0" in e.value for e in at.error)


def test_switching_model_fits_the_chosen_layers_and_heads():
    at = run("minilm")
    at.radio(key="att_scope").set_value("Chosen layers and heads").run()
    at.selectbox(key="att_layer").set_value(5).run()
    at.selectbox(key="att_head").set_value(9).run()
    at.multiselect(key="att_layers").set_value([1, 5]).run()
    at.multiselect(key="att_heads").set_value([9, 11]).run()
    assert not at.error, [e.value for e in at.error]
    at.session_state["model_source"] = "digits:vit"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # MiniLM has 6 layers x 12 heads, the ViT 2 x 4: layer 1 exists, heads 9 and 11 do not.
    assert at.multiselect(key="att_layers").value == [1]
    assert at.multiselect(key="att_heads").value == [at.selectbox(key="att_head").value]
    assert any("fitted to this model (2 layers × 4 heads)" in i.value for i in at.info)
    assert "Search a pattern per head" in [s.value for s in at.subheader]
    assert at.button(key="att_search")
    # Emptying the scope by hand is the user's doing: a clear message, and the search stays.
    at.multiselect(key="att_heads").set_value([]).run()
    assert any("at least one layer and one head" in e.value for e in at.error)
    assert "Search a pattern per head" in [s.value for s in at.subheader]


def test_minilm_text_inputs(minilm):
    at = page_app("attention", "minilm", TIMEOUT)
    at.query_params["att_source"] = "Your text"  # the URL opens the text box
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.radio(key="att_source").value == "Your text"
    quality = at.dataframe[0].value
    assert list(quality["metric"])[0].startswith("mean cosine") and 0 < quality["sparse"].iloc[0] < 1
    at.text_area(key="att_text").set_value("   ").run()
    assert any("the text is empty" in e.value for e in at.error)
    # A paste longer than any useful text: the browser takes it (max_chars above it), the page cuts it.
    text = ("Sparse attention keeps a few keys per query, so long inputs cost less. " * 100)[:6000]
    assert at.text_area(key="att_text").proto.max_chars >= len(text)
    at.text_area(key="att_text").set_value(text).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    ids = minilm.tokenizer(text)["input_ids"]
    assert len(text) == 6000 and len(ids) > 256
    note = " ".join(i.value for i in at.info)
    assert f"6,000 characters / {len(ids):,} tokens" in note and "the first 256 tokens are shown" in note
    shown = minilm.tokenizer.convert_ids_to_tokens(ids[:255] + ids[-1:])
    heat = titled(at, "grey = dropped")
    assert heat["data"][0]["x"] == [f"{i} {t}" for i, t in enumerate(shown)]
    assert shown[0] == "[CLS]" and shown[-1] == "[SEP]"
    z = decode(heat["data"][0]["z"])
    assert z.shape == (256, 256) and np.allclose(z.sum(1), 1, atol=1e-4)
    at.text_area(key="att_text").set_value("Sparse attention keeps a few keys per query.").run()
    assert not at.error and not at.info
    at.radio(key="att_scope").set_value("Chosen layers and heads").run()
    at.multiselect(key="att_heads").set_value([]).run()
    assert any("at least one layer and one head" in e.value for e in at.error)
    assert not at.exception


def test_model_without_attention_says_so():
    at = run("digits:mlp")
    assert any("has no attention layers" in i.value for i in at.info)


def test_search_too_small_budget_then_a_finished_search_after_a_reload(tmp_cache, monkeypatch):
    from sparsekit.attention import search_units

    saved = []
    real = search_units.save_unit
    monkeypatch.setattr(search_units, "save_unit", lambda key, layer, unit: saved.append(layer) or real(key, layer, unit))
    at = run("digits:vit", att_calib=4)
    at.number_input(key="att_budget").set_value(1.0).run()
    at.button(key="att_search").click().run()
    assert any("below what the sparsest candidate needs" in e.value for e in at.error) and saved == [0, 1]
    # The error leaves the Run button (no Stop, no Continue); a press measures nothing again.
    assert [b.key for b in at.button if b.key and b.key.startswith("att_search")] == ["att_search"]
    at.button(key="att_search").click().run()
    assert any("below what the sparsest candidate needs" in e.value for e in at.error) and saved == [0, 1]
    # Another budget over the same calibration inputs uses the layers already measured.
    at.number_input(key="att_budget").set_value(30.0).run()
    at.button(key="att_search").click().run()
    assert not at.error and not at.warning and saved == [0, 1]
    assert [b.key for b in at.button if b.key and b.key.startswith("att_search")] == []
    finished = at.dataframe[-1].value
    # A reload of a finished search offers the button (no stopped state); the press measures nothing.
    again = run("digits:vit", att_calib=4)
    again.number_input(key="att_budget").set_value(30.0).run()
    assert not again.warning and any("Press the button" in c.value for c in again.caption)
    again.button(key="att_search").click().run()
    assert not again.error and saved == [0, 1]
    assert again.dataframe[-1].value.to_dict("records") == finished.to_dict("records")
