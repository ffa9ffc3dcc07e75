"""The Attention page through AppTest: figures carry the captured attention and the pattern,
bad inputs get clear messages, the per-head search shows its plan."""
import json

import numpy as np
import pytest

import sparsekit
from sparsekit.attention import capture_attention
from sparsekit.models.digits import digits_split
from ui.testing import page_app

TIMEOUT = 300


def decode(arr):
    import base64

    if isinstance(arr, dict):
        shape = tuple(int(x) for x in str(arr.get("shape", "-1")).split(","))
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"]).reshape(shape).astype(float)
    return np.asarray([[np.nan if v is None else v for v in row] for row in arr], dtype=float)


def figures(at):
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def run(source, **state):
    at = page_app("attention", source, TIMEOUT, **state)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="module")
def vit_capture():
    vit = sparsekit.load_model("digits:vit")
    return capture_attention(vit, digits_split().x_test[3:4])


def test_vit_heatmap_pattern_and_recall_grid(vit_capture):
    at = run("digits:vit", att_image=3)
    assert not at.error, [e.value for e in at.error]
    at.selectbox(key="att_layer").set_value(1).run()
    at.selectbox(key="att_head").set_value(2).run()
    heat, grid = figures(at)[0], figures(at)[1]
    probs = vit_capture.probs[1, 2].numpy()
    assert np.allclose(decode(heat["data"][0]["z"]), probs, atol=1e-6)
    assert heat["data"][0]["x"][:2] == ["0 CLS", "1 r0c0"]
    # Default pattern: A-shape, sink 4, local 8; the overlay marks exactly the dropped cells.
    keep = np.array([[j < 4 or abs(i - j) < 8 for j in range(17)] for i in range(17)])
    dropped = decode(heat["data"][1]["z"])
    assert np.array_equal(np.isnan(dropped), keep)
    # Recall grid: each cell is the kept attention mass, recomputed here for one head.
    z = decode(grid["data"][0]["z"])
    want = float((probs * keep).sum(1).mean())
    assert z.shape == (2, 4) and z[1, 2] == pytest.approx(want, abs=1e-5)
    recall = next(m for m in at.metric if m.label == "Recall, this head")
    assert recall.value == f"{want:.1%}"
    assert len(at.get("download_button")) == 4  # metrics, head, pattern, quality


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
    heat = figures(at)[0]
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
    plan_fig = next(f for f in figures(at) if "chosen pattern per head" in json.dumps(f["layout"]["title"]))
    assert decode(plan_fig["data"][0]["z"]).shape == (2, 4)
    rows = at.dataframe[-1].value
    assert len(rows) == 8 and (rows["density"] <= 0.30).all()
    assert len(at.get("download_button")) == 6
    at.number_input(key="att_budget").set_value(0.0).run()
    at.button(key="att_search").click().run()
    assert any("budget must be above 0" in e.value for e in at.error)


def test_minilm_text_inputs():
    at = run("minilm")
    assert not at.error, [e.value for e in at.error]
    heat = figures(at)[0]
    assert heat["data"][0]["x"][0] == "0 [CLS]"
    quality = at.dataframe[0].value
    assert list(quality["metric"])[0].startswith("mean cosine") and 0 < quality["sparse"].iloc[0] < 1
    at.radio(key="att_source").set_value("Your text").run()
    at.text_area(key="att_text").set_value("   ").run()
    assert any("the text is empty" in e.value for e in at.error)
    at.text_area(key="att_text").set_value("token " * 300).run()
    assert any("the limit here is 256 tokens" in e.value for e in at.error)
    at.text_area(key="att_text").set_value("Sparse attention keeps a few keys per query.").run()
    assert not at.error
    at.radio(key="att_scope").set_value("Chosen layers and heads").run()
    at.multiselect(key="att_heads").set_value([]).run()
    assert any("at least one layer and one head" in e.value for e in at.error)
    assert not at.exception


def test_model_without_attention_says_so():
    at = run("digits:mlp")
    assert any("has no attention layers" in i.value for i in at.info)
