"""report: the per-layer report of a sparsified model (storage bytes per format, the 2:4 kernel check,
the CSV) and the model-level layer tables, checked against hand formulas, torch's own storage and
plain loops."""
import csv
import dataclasses
import io
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.report import (
    LayerReport,
    format_bytes,
    is_2_4,
    layer_table,
    params_by_type,
    report_csv,
    semi_structured_check,
)
from sparsekit.sparsify import SparsifyConfig, sparsify


def hand_bytes(rows, numel, kept, element_size, nm=None):
    """The four storage sizes by hand: dense; a bitmask of one bit per entry next to the kept values;
    CSR with an 8-byte column index per kept value and 8-byte row pointers (rows + 1); N:M with
    exactly N of every M kept and ceil(log2 M) bits of position per kept value."""
    out = {
        "dense_bytes": numel * element_size,
        "bitmask_bytes": kept * element_size + -(-numel // 8),
        "csr_bytes": kept * element_size + kept * 8 + (rows + 1) * 8,
        "nm_bytes": None,
    }
    if nm:
        n, m = nm
        values = numel // m * n
        out["nm_bytes"] = values * element_size + -(-values * math.ceil(math.log2(m)) // 8)
    return out


class Net(nn.Module):
    """A conv, an attention/MLP block, a GPT-2 style Conv1D ([in, out] weight) and a head tied to
    an embedding."""

    def __init__(self):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.embed = nn.Embedding(10, 16)
        self.attn = nn.Module()
        self.attn.q = nn.Linear(16, 16)
        self.mlp = nn.Module()
        self.mlp.fc = Conv1D(32, 16)  # weight [16, 32]: 16 inputs, 32 outputs
        self.mlp.out = nn.Linear(32, 16, bias=False)
        self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        h = self.attn.q(self.embed(ids))
        return self.head(self.mlp.out(torch.relu(self.mlp.fc(h))))


# Moved from test_sparsify.py and test_bench.py ----------------------------------------------------

def test_memory_formulas_against_torch_storage():
    w = torch.randn(64, 128)
    mask = sparsekit.nm_mask(w, 2, 4)
    kept = int(mask.sum())
    sizes = format_bytes(tuple(w.shape), kept, 2, (2, 4))
    csr = (w * mask).to_sparse_csr()
    torch_csr = csr.values().numel() * 2 + csr.col_indices().numel() * 8 + csr.crow_indices().numel() * 8
    assert sizes["csr_bytes"] == torch_csr
    assert sizes["dense_bytes"] == 64 * 128 * 2
    assert sizes["bitmask_bytes"] == kept * 2 + 64 * 128 // 8
    # 2:4 fp16: half the values plus 2 bits of metadata per kept value = numel/8 bytes.
    assert sizes["nm_bytes"] == 64 * 128 // 2 * 2 + 64 * 128 // 8


def test_semi_structured_rules():
    assert semi_structured_check((64, 128), (2, 4)).startswith("ok")
    assert "cuSPARSELt" in semi_structured_check((48, 48), (2, 4))  # cuSPARSELt only
    msg = semi_structured_check((30, 64), (2, 4))
    assert "multiple of 16" in msg and "multiple of 32" in msg
    assert "needs a 2:4 pattern (got 1:4)" in semi_structured_check((64, 128), (1, 4))
    assert "4-D" in semi_structured_check((8, 8, 3, 3), (2, 4))


def test_is_2_4_against_a_loop():
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        w = torch.randn(3, 8, generator=gen) * (torch.rand(3, 8, generator=gen) < 0.55)
        want = all(int((w[r, g * 4:(g + 1) * 4] != 0).sum()) <= 2 for r in range(3) for g in range(2))
        assert is_2_4(w) == want
    assert not is_2_4(torch.zeros(2, 6))  # 6 columns cannot form groups of 4
    assert not is_2_4(torch.zeros(2, 2, 4))


def test_layer_table_and_params_by_type():
    # Moved from test_sparsify.py (there on its Toy model; here on Net, with a Conv1D and a tied head).
    model = Net()
    rows = layer_table(model)
    assert [r["name"] for r in rows] == ["conv", "attn.q", "mlp.fc", "mlp.out", "head"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["conv"]["params"] == 8 * 4 * 9 + 8 and by_name["conv"]["weight_shape"] == "8×4×3×3"
    assert by_name["mlp.fc"]["params"] == 16 * 32 + 32 and by_name["mlp.fc"]["weight_shape"] == "16×32"
    assert by_name["mlp.fc"]["type"] == "Conv1D (GPT-2, [in, out])"
    assert [r["group"] for r in rows] == ["other", "attention", "mlp", "mlp", "other"]
    assert all(r["dtype"] == "float32" for r in rows)
    counts = params_by_type(model)
    # The tied head's weight is the embedding's: counted once, under the module met first.
    assert counts == {"Linear": 16 * 16 + 16 + 32 * 16, "Conv1D": 16 * 32 + 32, "Conv2d": 8 * 4 * 9 + 8,
                      "Embedding": 10 * 16}
    assert list(counts) == sorted(counts, key=lambda k: -counts[k])  # largest first
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())  # parameters() dedups
    # A DataParallel-style wrapper (``.module``) is looked through.
    wrapped = SimpleNamespace(module=model)
    assert layer_table(wrapped) == rows and params_by_type(wrapped) == counts


# format_bytes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,element_size,nm", [
    ((64, 128), 2, (2, 4)), ((64, 128), 4, (1, 4)), ((10, 24), 1, (3, 8)), ((7, 16), 8, (4, 16)),
    ((33, 30), 2, (1, 2)), ((5, 15), 4, (2, 5)), ((8, 4, 3, 3), 4, None), ((1, 1), 2, None), ((100,), 4, None),
])
def test_format_bytes_against_the_hand_formula(shape, element_size, nm):
    numel = math.prod(shape)
    for kept in sorted({0, 1, numel // 3, numel // 2, numel - 1, numel}):
        assert format_bytes(shape, kept, element_size, nm) == hand_bytes(shape[0], numel, kept, element_size, nm)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int8])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_csr_bytes_equal_torch_csr_storage(dtype, density):
    # Independent of the formula: what torch's CSR tensor actually holds (values, int64 column indices
    # and row pointers), for masks of any density and element size.
    gen = torch.Generator().manual_seed(int(density * 10))
    w = (torch.randn(24, 40, generator=gen) * 10).to(dtype)
    keep = torch.rand(24, 40, generator=gen) < density
    sparse = torch.where(keep, w, torch.zeros((), dtype=dtype)).to_sparse_csr()
    torch_bytes = sum(t.numel() * t.element_size() for t in (sparse.values(), sparse.col_indices(), sparse.crow_indices()))
    kept = int((torch.where(keep, w, torch.zeros((), dtype=dtype)) != 0).sum())
    assert format_bytes((24, 40), kept, w.element_size(), None)["csr_bytes"] == torch_bytes


# The layer reports of a sparsify result ----------------------------------------------------------

@pytest.mark.parametrize("config", [
    SparsifyConfig(pattern="nm", n=2, m=4),
    SparsifyConfig(pattern="nm", n=1, m=8),
    SparsifyConfig(pattern="unstructured", sparsity=0.7, scope="global"),
])
def test_sparsify_reports_match_the_masks_and_the_hand_formula(config):
    model = Net()
    res = sparsify(model, config)
    layers = dict(model.named_modules())
    assert [r.name for r in res.report] == [r["name"] for r in layer_table(model)]
    nm = (config.n, config.m) if config.pattern == "nm" else None
    for r in res.report:
        weight = layers[r.name].weight
        assert r.shape == tuple(weight.shape) and r.numel == weight.numel()
        if r.pruned:
            assert r.kept == int(res.masks[r.name].sum())
        else:
            assert r.name not in res.masks and r.kept == r.numel and r.skipped_reason
        # CSR rows are the output features in every layout (Conv1D stores [in, out]).
        rows = weight.shape[1] if r.name == "mlp.fc" else weight.shape[0]
        want = hand_bytes(rows, r.numel, r.kept, weight.element_size(), nm if r.pruned else None)
        assert {k: getattr(r, k) for k in want} == want, r.name
        assert r.kept_fraction == r.kept / r.numel
    assert "tied" in {r.name: r for r in res.report}["head"].skipped_reason


def test_sparsify_report_of_a_half_precision_model():
    model = nn.Sequential(nn.Linear(64, 32)).half()
    (r,) = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4)).report
    assert r.dense_bytes == 32 * 64 * 2 and r.nm_bytes == 32 * 64 // 2 * 2 + 32 * 64 // 2 * 2 // 8
    assert r.semi_structured.startswith("ok (cuSPARSELt, CUTLASS; as float16")


# LayerReport -------------------------------------------------------------------------------------

def layer(**kw):
    base = dict(name="l", layer_type="Linear", group="mlp", shape=(4, 8), numel=32, kept=16)
    return LayerReport(**{**base, **kw})


def test_layer_report_refuses_impossible_counts_and_sizes():
    for kept in (-1, 33):
        with pytest.raises(ValueError, match=r"l: kept must be between 0 and numel \(32\), got"):
            layer(kept=kept)
    for key in ("dense_bytes", "bitmask_bytes", "csr_bytes", "nm_bytes"):
        with pytest.raises(ValueError, match=f"l: {key} must be >= 0, got -1"):
            layer(**{key: -1})
    assert layer(kept=0).kept_fraction == 0.0 and layer(kept=32).kept_fraction == 1.0
    assert layer(shape=(0,), numel=0, kept=0).kept_fraction == 1.0  # nothing to prune: all kept


def test_layer_report_row_and_csv():
    a = layer(kept=8, csr_bytes=200, nm_bytes=None)
    b = layer(name="skip", shape=(2, 3, 1, 1), numel=6, kept=6, skipped_reason="too small")
    assert a.pruned and not b.pruned
    row = a.as_row()
    assert row["shape"] == "4×8" and row["kept_fraction"] == 0.25
    assert set(row) == {f.name for f in dataclasses.fields(LayerReport)} | {"kept_fraction"}
    text = report_csv(SimpleNamespace(report=[a, b]))
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["name"] for r in parsed] == ["l", "skip"]
    assert parsed[0]["csr_bytes"] == "200" and parsed[0]["nm_bytes"] == "" and parsed[1]["shape"] == "2×3×1×1"
    assert float(parsed[0]["kept_fraction"]) == 0.25 and parsed[1]["skipped_reason"] == "too small"
    assert list(parsed[0]) == list(row)
    assert report_csv(SimpleNamespace(report=[])).splitlines() == ["name"]


# The 2:4 checks -----------------------------------------------------------------------------------

def kernel_rules(rows, cols):
    """PyTorch's float16 2:4 kernels by hand (torch.sparse docs): cuSPARSELt takes rows and columns
    that are multiples of 16, CUTLASS rows a multiple of 32 and columns of 64."""
    out = []
    if rows % 16 == 0 and cols % 16 == 0:
        out.append("cuSPARSELt")
    if rows % 32 == 0 and cols % 64 == 0:
        out.append("CUTLASS")
    return out


def test_semi_structured_check_against_hand_rules():
    for rows in (8, 16, 24, 32, 48, 64, 96):
        for cols in (16, 32, 48, 64, 80, 128, 192):
            msg = semi_structured_check((rows, cols), (2, 4))
            want = kernel_rules(rows, cols)
            if want:
                assert msg == f"ok ({', '.join(want)}; as float16 on CUDA)", (rows, cols)
            else:
                assert not msg.startswith("ok") and "cuSPARSELt needs" in msg and "CUTLASS needs" in msg


def test_semi_structured_check_names_every_failing_rule():
    assert semi_structured_check((64, 128), None) == "needs a 2:4 pattern"
    both = semi_structured_check((8, 8, 3, 3), (1, 4))
    assert both == "needs a 2:4 pattern (got 1:4); weight is 4-D; only 2-D (Linear) weights"
    # A dtype neither backend takes, and one that only CUTLASS takes.
    assert "does not take torch.float64" in semi_structured_check((64, 128), (2, 4), dtype=torch.float64)
    assert semi_structured_check((64, 128), (2, 4), dtype=torch.float32) == "ok (CUTLASS; as float32 on CUDA)"


def test_is_2_4_on_each_group_position():
    # A third non-zero in any one group of any row is caught; at most two in each group passes.
    base = torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, 4]] * 3)
    assert is_2_4(base)
    for r in range(3):
        for c in range(8):
            w = base.clone()
            w[r, c] = 5.0
            group = w[r, c // 4 * 4: c // 4 * 4 + 4]
            assert is_2_4(w) == (int((group != 0).sum()) <= 2)
    assert is_2_4(base.requires_grad_())  # a parameter's weight as it comes
