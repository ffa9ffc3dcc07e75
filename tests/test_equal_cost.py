"""The equal-cost axis (sparsekit.structured.equal_cost, sparsekit.viz.families): kept parameters and stored bytes
against plain loops and the per-family byte formulas over models rebuilt here; skipped families with their
reasons; the figure's traces against the rows and the family colours; bad input refused with a message."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.config import SparsifyConfig
from sparsekit.structured import MonarchConfig, monarchize, slice_model
from sparsekit.structured.equal_cost import FamilyRow, family_points
from sparsekit.viz import FAMILY_COLORS, family_cost_figure
from tests.conftest import shared_model

pytestmark = pytest.mark.usefixtures("one_thread")


def unique_params(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter tensor once (by identity), with a name it has."""
    seen: set[int] = set()
    out = []
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def count_loop(module: nn.Module, masked: set[str]) -> int:
    """Entries stored: the nonzeros of each masked weight, counted one by one; everything else in full."""
    total = 0
    for name, p in unique_params(module):
        if name in masked:
            for v in p.detach().flatten().tolist():
                total += v != 0
        else:
            total += p.numel()
    return total


def bytes_formula(module: nn.Module, masked: set[str], nm: tuple[int, int] | None) -> int:
    """float32 everywhere; masked weights: bitmap (nnz·4 + ⌈numel/8⌉) or N:M (numel·n/m values, each with
    ⌈log2 m⌉ index bits)."""
    total = 0
    for name, p in unique_params(module):
        assert p.dtype == torch.float32
        if name not in masked:
            total += 4 * p.numel()
        elif nm is None:
            total += 4 * int((p != 0).sum()) + math.ceil(p.numel() / 8)
        else:
            kept = p.numel() * nm[0] // nm[1]
            total += 4 * kept + math.ceil(kept * math.ceil(math.log2(nm[1])) / 8)
    return total


def masked_names(result) -> set[str]:
    return {result.weight_names[r.name] for r in result.report if r.pruned}


def row(points, family, setting) -> FamilyRow:
    found = [r for r in points.rows if r.family == family and r.setting == setting]
    assert len(found) == 1, (family, setting, [(r.family, r.setting) for r in points.rows])
    return found[0]


@pytest.fixture(scope="module")
def vit_points():
    loaded = shared_model("digits:vit")
    return loaded, family_points(loaded, unstructured=(0.5, 0.8), nm=((2, 4), (1, 4)), slicegpt=(0.2,),
                                 monarch_blocks=(4, 16), progress=False)


def test_masked_families_count_and_bytes_against_plain_loops(vit_points):
    loaded, points = vit_points
    dense_total = sum(p.numel() for _, p in unique_params(loaded.module))
    dense = row(points, "dense", "dense")
    assert dense.kept_params == dense.dense_params == dense_total and dense.kept_share == 1.0
    assert dense.stored_bytes == 4 * dense_total
    assert dense.quality == loaded.quality()
    for family, setting, config, nm in [
        ("unstructured", "50%", SparsifyConfig(pattern="unstructured", sparsity=0.5), None),
        ("unstructured", "80%", SparsifyConfig(pattern="unstructured", sparsity=0.8), None),
        ("N:M", "2:4", SparsifyConfig(pattern="nm", n=2, m=4), (2, 4)),
        ("N:M", "1:4", SparsifyConfig(pattern="nm", n=1, m=4), (1, 4)),
    ]:
        result = sparsekit.sparsify(loaded, config, progress=False)
        names = masked_names(result)
        got = row(points, family, setting)
        assert got.kept_params == count_loop(result.model, names), (family, setting)
        assert got.dense_params == dense_total
        assert got.kept_share == pytest.approx(got.kept_params / dense_total)
        assert got.stored_bytes == bytes_formula(result.model, names, nm), (family, setting)
        assert got.quality == pytest.approx(loaded.quality(result.model))
    # the shares fall with the sparsity; embeddings, norms and biases stay, so the share is above 1 - sparsity
    assert row(points, "unstructured", "80%").kept_share < row(points, "unstructured", "50%").kept_share
    assert 0.2 < row(points, "unstructured", "80%").kept_share < 0.3


def test_monarch_counts_and_bytes_against_the_rebuilt_model(vit_points):
    loaded, points = vit_points
    for b in (4, 16):
        rebuilt = monarchize(loaded, MonarchConfig(blocks=b), progress=False).model
        got = row(points, "Monarch", f"{b} blocks")
        plain = sum(p.numel() for _, p in unique_params(rebuilt))
        # and against the formula: every projected Linear keeps b·(in + out) of its out·in weights
        formula = sum(p.numel() for _, p in unique_params(loaded.module))
        for m in rebuilt.modules():
            if type(m).__name__ == "MonarchLinear":
                formula -= m.out_features * m.in_features - b * (m.in_features + m.out_features)
        assert got.kept_params == plain == formula
        assert got.stored_bytes == 4 * plain
        assert got.quality == pytest.approx(loaded.quality(rebuilt))


def test_slicegpt_points_of_the_vit(vit_points):
    """The digits ViT is pre-LN: its SliceGPT point is the sliced model's count, against the rebuilt model and a
    hand formula (d = 51 of 64: embeddings 4d + d + d + 17d, per block 3(64d + 64) + 64d + d + 128d + 128 + 128d + d
    + 2d², head 10d + 10)."""
    loaded, points = vit_points
    assert points.skipped == []
    assert [r.family for r in points.rows] == (["dense"] + ["unstructured"] * 2 + ["N:M"] * 2 + ["SliceGPT"]
                                               + ["Monarch"] * 2)
    got = row(points, "SliceGPT", "slice 20%")
    sliced = slice_model(loaded, 0.2, progress=False)
    d = 51
    formula = 23 * d + 2 * (3 * (64 * d + 64) + 64 * d + d + 128 * d + 128 + 128 * d + d + 2 * d * d) + 10 * d + 10
    plain = sum(p.numel() for _, p in unique_params(sliced.module))
    assert sliced.kept_width == d and got.kept_params == plain == formula == sliced.params_after
    assert got.stored_bytes == 4 * plain and got.detail == "width 64 → 51"
    assert got.quality == pytest.approx(loaded.quality(sliced.module))


def test_monarch_that_fits_no_layer_and_slicegpt_without_blocks_are_skipped():
    loaded = shared_model("digits:mlp")  # 256×64, 128×256, 10×128: 3 divides none of the sizes
    points = family_points(loaded, unstructured=(0.5,), nm=(), slicegpt=(0.1,), monarch_blocks=(3, 2),
                           progress=False)
    reasons = {(f, s): why for f, s, why in points.skipped}
    assert set(reasons) == {("SliceGPT", "all"), ("Monarch", "3 blocks")}
    assert "no transformer blocks" in reasons[("SliceGPT", "all")]
    assert "no layer can be projected" in reasons[("Monarch", "3 blocks")]
    assert [(r.family, r.setting) for r in points.rows] == [("dense", "dense"), ("unstructured", "50%"),
                                                              ("Monarch", "2 blocks")]
    title = family_cost_figure(points, "accuracy").layout.title.text  # the skipped ones named in the figure
    assert "not applicable: Monarch 3 blocks, SliceGPT" in title


def test_slicegpt_counts_against_the_rebuilt_model_and_a_fraction_leaving_nothing(model_root):
    loaded = sparsekit.load_model("hf:family/tiny-gpt2")
    width = loaded.module.config.hidden_size
    too_much = 1 - 0.5 / width  # ⌊(1 − f)·D⌋ = 0
    calls = []
    points = family_points(loaded, unstructured=(), nm=(), slicegpt=(0.25, too_much), monarch_blocks=(),
                           progress=lambda f, msg: calls.append(f))
    rebuilt = slice_model(loaded, 0.25, progress=False).module
    got = row(points, "SliceGPT", "slice 25%")
    plain = sum(p.numel() for _, p in unique_params(rebuilt))
    assert got.kept_params == plain and got.stored_bytes == 4 * plain
    assert got.dense_params == sum(p.numel() for _, p in unique_params(loaded.module))
    assert got.quality == pytest.approx(loaded.quality(rebuilt), rel=1e-4)
    assert [(f, s) for f, s, _ in points.skipped] == [("SliceGPT", f"slice {too_much:.0%}")]
    assert "leaves no dimension" in points.skipped[0][2]
    assert calls == sorted(calls) and calls[-1] == 1.0


def test_figure_traces_carry_the_rows_and_the_family_colours(vit_points):
    _, points = vit_points
    for x, scale in (("params", None), ("bytes", 2**20)):
        fig = family_cost_figure(points, "accuracy", x=x)
        traces = {t.meta: t for t in fig.data}
        assert set(traces) == {"dense", "unstructured", "N:M", "SliceGPT", "Monarch"}
        for family, trace in traces.items():
            rows = sorted((r for r in points.rows if r.family == family),
                          key=lambda r: r.kept_params if scale is None else r.stored_bytes)
            want_x = [r.kept_params if scale is None else r.stored_bytes / scale for r in rows]
            assert list(trace.x) == pytest.approx(want_x)
            assert list(trace.y) == pytest.approx([r.quality["accuracy"] for r in rows])
            assert list(trace.text) == ["dense" if family == "dense" else r.setting for r in rows]
            assert trace.marker.color == FAMILY_COLORS[family]
        assert traces["dense"].marker.symbol == "star"
        assert "not applicable" not in fig.layout.title.text  # every family applies to the ViT
        assert ("MB" in fig.layout.xaxis.title.text) == (x == "bytes")
        assert "count" in fig.layout.xaxis.title.text or x == "bytes"
    assert len(set(FAMILY_COLORS.values())) == len(FAMILY_COLORS)  # one colour per family
    assert family_cost_figure(points, "accuracy").layout.yaxis.type is None
    assert family_cost_figure(points, "accuracy", log_y=True).layout.yaxis.type == "log"


def test_figure_bad_input(vit_points):
    _, points = vit_points
    with pytest.raises(ValueError, match="x must be 'params' or 'bytes'"):
        family_cost_figure(points, "accuracy", x="sparsity")
    with pytest.raises(ValueError, match="no row has the metric 'perplexity'.*accuracy"):
        family_cost_figure(points, "perplexity")
    with pytest.raises(ValueError, match=r"rows\[0\] must be a FamilyRow"):
        family_cost_figure([{"family": "dense"}], "accuracy")
    with pytest.raises(ValueError, match="must be FamilyPoints or a list"):
        family_cost_figure("rows", "accuracy")
    assert not family_cost_figure([], "accuracy").data  # nothing to draw: the empty-figure note


@pytest.mark.parametrize("kwargs, message", [
    (dict(unstructured=(), nm=(), slicegpt=(), monarch_blocks=()), "choose at least one setting"),
    (dict(unstructured=(1.0,)), r"unstructured: .* in \[0, 1\), got 1.0"),
    (dict(unstructured=(-0.1,)), r"in \[0, 1\), got -0.1"),
    (dict(unstructured=(float("nan"),)), r"in \[0, 1\), got nan"),
    (dict(unstructured=(True,)), r"in \[0, 1\), got True"),
    (dict(slicegpt=(1.5,)), r"slicegpt: .* in \[0, 1\)"),
    (dict(unstructured=0.5), "must be a list of settings"),
    (dict(nm=((4, 4),)), r"0 < n < m, got \(4, 4\)"),
    (dict(nm=(2,)), r"pair \(n, m\)"),
    (dict(monarch_blocks=(0,)), "integer >= 1, got 0"),
    (dict(monarch_blocks=(2.5,)), "integer >= 1, got 2.5"),
    (dict(method="nope"), "unknown method 'nope'"),
    (dict(quality="accuracy"), "quality must be a function"),
])
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        family_points(shared_model("digits:mlp"), progress=False, **kwargs)


def test_not_a_loaded_model():
    with pytest.raises(ValueError, match="takes a LoadedModel"):
        family_points(shared_model("digits:mlp").module, progress=False)  # type: ignore[arg-type]


def test_points_show_a_card_and_draw_their_figure():
    from sparsekit.display import percent
    from sparsekit.structured.equal_cost import FamilyPoints, FamilyRow

    rows = [FamilyRow("dense", "dense", 100, 100, 400, {"accuracy": 97.5}),
            FamilyRow("unstructured", "50%", 60, 100, 300, {"accuracy": 90.0})]
    points = FamilyPoints("digits:mlp", rows, [("SliceGPT", "all", "no blocks")])
    card = points.summary_card()
    assert card.title == "FamilyPoints: digits:mlp" and card.headline == {"settings": "1", "skipped": "1"}
    assert [r["kept"] for r in card.rows] == [percent(1.0), percent(0.6)]
    assert [r["bytes"] for r in card.rows] == ["400 B", "300 B"]
    assert "SliceGPT all: no blocks" in card.note and "FamilyPoints" in repr(points)
    assert "<table" in points._repr_html_()
    from sparsekit import viz  # noqa: F401  (registers the figures)

    fig = points.figure(metric="accuracy")
    assert {t.meta for t in fig.data} >= {"unstructured"}
