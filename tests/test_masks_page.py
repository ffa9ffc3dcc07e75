"""The Masks page through AppTest: neutral delta badges, N:M group lines and patterns, theme-neutral
figures, and the layer and view read from the URL."""
import numpy as np
import pytest
from streamlit.proto.Metric_pb2 import Metric as MetricProto

import sparsekit
from sparsekit.sparsify import SparsifyConfig
from devtools.apptest import decode, figures, page_app

TIMEOUT = 120
WHITE = {"white", "#fff", "#ffffff", "rgb(255,255,255)"}


@pytest.fixture(scope="module")
def mlp():
    return sparsekit.load_model("digits:mlp")


def metric(at, label):
    return next(m for m in at.metric if m.label == label)


def weight(mlp, layer):
    return dict(mlp.module.named_modules())[layer].weight.detach()


def test_sad_and_kept_badges_are_neutral(mlp):
    at = page_app("masks", "digits:mlp", TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    layer = at.selectbox(key="mask_layer").value
    w = weight(mlp, layer)
    a = sparsekit.nm_mask(w, 2, 4)
    b = sparsekit.sparsify(mlp, SparsifyConfig(method="random")).masks[layer]
    differ = sum(int(x != y) for x, y in zip(a.flatten().tolist(), b.flatten().tolist()))
    sad = metric(at, "SAD, this layer")
    assert sad.value == f"{differ:,}"
    # A share of the weights is a size, not a rise: shown without arrow and in grey.
    assert sad.proto.delta == f"{differ / a.numel():.2%} of weights"
    assert sad.proto.direction == MetricProto.MetricDirection.NONE
    assert sad.proto.color == MetricProto.MetricColor.GRAY
    # Random and magnitude 2:4 keep the same number: no "+0" badge.
    kept = metric(at, "Kept, second mask")
    assert kept.value == f"{int(b.sum()):,}" and kept.proto.delta == ""

    # 1:4 keeps fewer: the change is shown, in grey (keeping fewer is neither good nor bad).
    at.selectbox(key="mb_nm").set_value("1:4").run()
    kept = metric(at, "Kept, second mask")
    b14 = sparsekit.sparsify(mlp, SparsifyConfig(n=1, m=4, method="random")).masks[layer]
    diff = int(b14.sum()) - int(a.sum())
    assert diff < 0 and kept.proto.delta == f"{diff:+,}"
    assert kept.proto.color == MetricProto.MetricColor.GRAY

    # The same setting twice: SAD 0 and no delta at all.
    at.selectbox(key="mb_nm").set_value("2:4").run()
    at.selectbox(key="mb_method").set_value("magnitude").run()
    assert metric(at, "SAD, this layer").value == "0"
    assert metric(at, "SAD, this layer").proto.delta == ""
    assert metric(at, "Kept, second mask").proto.delta == ""


def test_layer_and_view_come_from_the_url(mlp):
    at = page_app("masks", "digits:mlp", TIMEOUT)
    at.query_params.update({"mask_layer": "fc2", "mask_view": "Zoom"})
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="mask_layer").value == "fc2"
    assert at.selectbox(key="mask_layer").proto.query_param_key == "mask_layer"
    assert at.session_state["mask_view"] == "Zoom"
    assert [t.label for t in at.tabs] == ["Overview", "Zoom", "N:M groups", "Compare"]
    z = decode(figures(at)[0]["data"][0]["z"])
    assert np.array_equal(z, sparsekit.nm_mask(weight(mlp, "fc2"), 2, 4).numpy().astype(float))


def test_zoom_group_lines_and_pattern_histogram(mlp):
    at = page_app("masks", "digits:mlp", TIMEOUT)
    at.run()
    at.number_input(key="zoom_col").set_value(2).run()
    at.slider(key="zoom_size").set_value(10).run()
    zoom = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("weights in rows"))
    lines = sorted(s["x0"] for s in zoom["layout"].get("shapes", []))
    assert lines == [c - 0.5 for c in range(3, 12) if c % 4 == 0]  # columns 2..11: groups start at 4 and 8

    layer = at.selectbox(key="mask_layer").value
    mask = sparsekit.nm_mask(weight(mlp, layer), 2, 4).tolist()
    counts = {}
    for row in mask:
        for s in range(0, len(row), 4):
            p = "".join("1" if row[s + j] else "0" for j in range(4))
            counts[p] = counts.get(p, 0) + 1
    patterns = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("kept positions per group"))
    assert dict(zip(patterns["data"][0]["x"], decode(patterns["data"][0]["y"]).tolist())) == {
        p: counts.get(p, 0) for p in ("1100", "1010", "1001", "0110", "0101", "0011")}


def test_figures_follow_the_app_theme(mlp):
    at = page_app("masks", "digits:mlp", TIMEOUT)
    at.run()
    charts = at.get("plotly_chart")
    assert len(charts) >= 6 and all(c.proto.theme == "streamlit" for c in charts)
    for fig in figures(at):
        for attr in ("paper_bgcolor", "plot_bgcolor"):
            value = str(fig["layout"].get(attr, "")).replace(" ", "").lower()
            assert value not in WHITE, (fig["layout"].get("title"), attr)


def test_unstructured_mask_has_no_group_views():
    cfg = SparsifyConfig(pattern="unstructured", sparsity=0.7)
    at = page_app("masks", "digits:mlp", TIMEOUT, config_json=cfg.to_json())
    at.run()
    assert not at.exception
    assert not any(s.value == "N:M group inspector" for s in at.subheader)
    assert any("group views are for N:M" in i.value for i in at.info)
    zoom = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("weights in rows"))
    assert not zoom["layout"].get("shapes")
