"""Results show themselves: each card's figures equal the object's own fields (recomputed here by hand),
the HTML escapes what it shows, repr() stays one short line, and .figure() draws the named plot."""
from __future__ import annotations

import html
import re

import plotly.graph_objects as go
import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.allocation import Allocation
from sparsekit.attention import AttentionCapture, HeadMetrics
from sparsekit.display import Card, Shown, fmt, percent
from sparsekit.sensitivity import SensitivityConfig, SensitivityScan


def cells(card_html: str) -> list[list[str]]:
    """The table of a card's HTML as rows of cell texts (unescaped)."""
    return [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", card_html) if "<td>" in row]


def check_short(obj: Shown) -> None:
    text = repr(obj)
    assert text.startswith("<") and text.endswith(">") and "\n" not in text and len(text) < 400
    assert "tensor(" not in text and "Sequential" not in text


def test_card_formats_and_escapes():
    card = Card("T <x>", {"a&b": "1 < 2"}, [{"k": 1234567, "v": 0.000123456, "n": None, "s": "<b>"}] * 12, "n<ote")
    page = card.html()
    assert "<b>a&amp;b</b>: 1 &lt; 2" in page and "&lt;b&gt;" in page and "n&lt;ote" in page
    assert "<strong>T &lt;x&gt;</strong>" in page
    assert cells(page)[0] == ["1,234,567", "0.0001235", "—", "<b>"]
    assert len(cells(page)) == 10 and "… and 2 more rows" in page
    assert card.text() == "T <x>: a&b 1 < 2"
    assert fmt(float("nan")) == "NaN" and fmt(True) == "yes" and fmt((2, 4)) == "2×4" and percent(0.5) == "50.0%"


def test_sparsify_result_card():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 4))
    result = sparsekit.sparsify(net, sparsekit.SparsifyConfig(pattern="nm", n=1, m=4))
    card = result.summary_card()
    # By hand from the masks: layers 0 and 2 take 1:4 (8 and 16 inputs); layer 4 has 6 inputs, not a multiple of 4.
    kept = sum(int(m.sum()) for m in result.masks.values())
    pruned_total = sum(m.numel() for m in result.masks.values())
    all_total = sum(m.weight.numel() for m in net if isinstance(m, nn.Linear))
    assert card.headline["layers with weights removed"] == "2 / 3"
    assert card.headline["kept in pruned layers"] == f"{100 * kept / pruned_total:.1f}%" == "25.0%"
    assert card.headline["kept in all Linear/Conv"] == f"{100 * (kept + 24) / all_total:.1f}%"
    rows = cells(result._repr_html_())
    assert [r[0] for r in rows] == ["0", "2", "4"]
    assert rows[2][2] == "100.0%" and "not a multiple of M=4" in rows[2][3]
    check_short(result)
    fig = result.figure()
    assert isinstance(fig, go.Figure) and len(fig.data) >= 1


def scan() -> SensitivityScan:
    cfg = SensitivityConfig(sparsities=(0.5, 0.9))
    return SensitivityScan(
        config=cfg, spec="digits:mlp", fingerprint="f", metric="accuracy", higher_is_better=True,
        dense_quality=97.5, settings=("50%", "90%"), units=("fc1", "fc2", "head"),
        unit_layers=(("fc1",), ("fc2",), ("head",)), unit_numel=(16384, 32768, 1280),
        quality=((97.0, 80.0), (97.5, 96.0), (97.2, None)), drop=((0.5, 17.5), (0.0, 1.5), (0.3, None)),
        proxy=((0.1, 0.6), (0.05, 0.2), (0.2, 0.9)), spearman=(0.5, None))


def test_sensitivity_scan_card():
    s = scan()
    card = s.summary_card()
    rows = cells(s._repr_html_())
    # Most sensitive first at the last setting; a missing drop sorts last.
    assert [r[0] for r in rows] == ["fc1", "fc2", "head"]
    assert rows[0] == ["fc1", "16,384", "0.5", "17.5"] and rows[2][3] == "—"
    assert card.headline["units"] == "3" and card.headline["complete"] == "yes"
    assert card.headline["Spearman proxy vs drop"] == "0.5, —"
    check_short(s)
    fig = s.figure()
    assert isinstance(fig, go.Figure)


def test_allocation_card():
    alloc = Allocation("owl", "unstructured", {"a": 0.4, "b": 0.6}, {"a": 400, "b": 1200}, {"a": 1000, "b": 2000},
                       1600, scores={"a": 0.01, "b": 0.002}, note="OWL note")
    card = alloc.summary_card()
    assert card.headline["overall sparsity"] == "53.33% (1,600 of 3,000)"
    assert card.headline["requested"] == "1,600 pruned"
    rows = cells(alloc._repr_html_())
    assert rows == [["a", "1,000", "40.00%", "0.01"], ["b", "2,000", "60.00%", "0.002"]]
    check_short(alloc)
    fig = alloc.figure()
    assert [round(y, 6) for y in fig.data[0].y] == [40.0, 60.0]


def capture() -> AttentionCapture:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    qkv = torch.randn(2, 3, 5, 4)
    return AttentionCapture(scores=probs.log(), probs=probs, query=qkv, key=qkv, value=qkv,
                            tokens=["CLS", "a", "<b>", "c", "SEP"], causal=False, layer_names=["l0", "l1"],
                            model="minilm")


def test_attention_capture_card():
    cap = capture()
    card = cap.summary_card()
    assert card.headline["layers × heads"] == "2 × 3" and card.headline["tokens"].startswith("5: CLS a <b>")
    rows = cells(cap._repr_html_())
    # Mean entropy per layer by a plain loop.
    for layer in range(2):
        total = 0.0
        for h in range(3):
            for i in range(5):
                total -= sum(float(p) * float(torch.log(p)) for p in cap.probs[layer, h, i])
        assert float(rows[layer][2]) == pytest.approx(total / 15, rel=1e-3)
    check_short(cap)
    fig = cap.figure(layer=1, head=2)
    assert torch.allclose(torch.tensor(fig.data[0].z, dtype=torch.float32), cap.probs[1, 2])
    with pytest.raises(ValueError, match="outside the capture"):
        cap.figure(layer=2)


def test_head_metrics_card():
    m = HeadMetrics("sliding window", density=torch.tensor([[0.2, 0.4], [0.6, 0.8]]),
                    recall=torch.tensor([[0.9, 1.0], [0.5, 0.7]]), error=torch.tensor([[0.1, 0.0], [0.3, 0.5]]))
    card = m.summary_card()
    assert card.headline["mean density"] == "50.0%" and card.headline["mean recall"] == "77.5%"
    assert cells(m._repr_html_()) == [["0", "30.0%", "95.0%", "0.05"], ["1", "70.0%", "60.0%", "0.4"]]
    check_short(m)
    assert m.figure(value="error").data[0].z is not None
    with pytest.raises(ValueError, match="value must be one of"):
        m.figure(value="speed")


def test_a_result_without_figure_says_so():
    class Plain(Shown):
        def summary_card(self) -> Card:
            return Card("Plain")

    with pytest.raises(TypeError, match="has no figure"):
        Plain().figure()
