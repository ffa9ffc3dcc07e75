"""The shared calibration forward's fast paths (issue #28): input statistics from one pass over the
float32 rows, the blocked XᵀX, packed calibration rows taken without a copy, and the block order's
extra forward skipping the block's last layer. Each is checked against the plain computation: the
statistics against float64 sums written out here, the masks and weights against the same pruning
with the skip turned off. No timing is asserted (benchmarks/bench_scale.py measures it)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.layers import prunable_layers
from sparsekit.methods import calibration, get_method
from sparsekit.methods.calibration import LayerInputs, capture_input_stats
from sparsekit.methods.stats import GRAM_BLOCK, InputStats, gram, square_sums


def _rows(tokens, cols, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g) * torch.exp(torch.randn(cols, generator=g))
    return x.to(dtype)


@pytest.mark.parametrize("tokens,cols,dtype", [(1, 7, torch.float32), (300, 129, torch.float32),
                                               (1000, 768, torch.float32), (50, 40, torch.float64),
                                               (64, 33, torch.float16)])
def test_square_sums_equal_float64_sums(tokens, cols, dtype):
    x = _rows(tokens, cols, cols, dtype)
    want = x.double().pow(2).sum(0)
    got = square_sums(x)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=1e-13, atol=0.0)
    # A leading slice of rows (the packed calibration's view) and a non-contiguous one.
    assert torch.allclose(square_sums(x[: tokens // 2 + 1]), x[: tokens // 2 + 1].double().pow(2).sum(0), rtol=1e-13)
    assert torch.allclose(square_sums(x.t().contiguous().t()), want, rtol=1e-13)


def test_square_sums_of_no_rows_is_zero():
    assert torch.equal(square_sums(torch.empty(0, 5)), torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("cols", [3, GRAM_BLOCK, GRAM_BLOCK + 1, 2 * GRAM_BLOCK + 70])
def test_gram_equals_the_full_product_and_is_symmetric(cols):
    x = _rows(2 * cols + 5, cols, cols)
    want = x.double().T @ x.double()
    got = gram(x)
    assert torch.equal(got, got.T)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))


def test_input_stats_add_accumulates():
    a, b = _rows(40, 24, 1), _rows(30, 24, 2)
    norms, hess = InputStats("norms"), InputStats("hessian")
    for part, samples in ((a, 2), (b, 3)):
        norms.add(part, samples)
        hess.add(part, samples)
    both = torch.cat([a, b]).double()
    assert torch.allclose(norms.accumulated(), both.pow(2).sum(0), rtol=1e-13)
    assert torch.allclose(hess.hessian(), 2.0 / 5 * both.T @ both, rtol=1e-12)
    with pytest.raises(ValueError, match="never called"):
        InputStats("norms").accumulated()
    with pytest.raises(ValueError, match="stats kind"):
        InputStats("gradients")


@pytest.mark.parametrize("mask_rows", [[16, 16, 9], [16, 5, 16], [3, 16, 16]])
def test_columns_leave_out_padding_with_or_without_a_copy(mask_rows):
    # [16, 16, 9]: packed rows, only the end padded (a leading slice); the others pad inside.
    x = torch.randn(3, 16, 8)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    for row, count in enumerate(mask_rows):
        mask[row, :count] = True
    view = LayerInputs("fc", nn.Linear(8, 4), False)
    got = view.columns(x, mask)
    want = torch.cat([x[row, :count] for row, count in enumerate(mask_rows)])
    assert torch.equal(got, want)
    assert (got.data_ptr() == x.data_ptr()) == (mask_rows == [16, 16, 9])


def _tiny_gpt2(layers=4):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_head=4, n_embd=32, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def _calibration(packed=True):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 64, (3, 16), generator=g)
    mask = torch.ones(3, 16, dtype=torch.long)
    if packed:
        mask[2, 11:] = 0
    else:
        mask[0, 12:] = 0
        mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_capture_input_stats_equal_float64_sums_of_the_inputs():
    model = _tiny_gpt2(2)
    calib = _calibration(packed=False)
    names = [n for n, _ in prunable_layers(model) if n.startswith("transformer.h.")]
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach().clone()))
               for n in names]
    norms = capture_input_stats(model, names, calib, "norms")
    hess = capture_input_stats(model, names, calib, "hessian")
    for h in handles:
        h.remove()
    real = calib["attention_mask"].bool()
    for n in names:
        (x,) = seen[n][:1]
        rows = x[real].double()
        assert torch.allclose(norms[n].accumulated(), rows.pow(2).sum(0), rtol=1e-12)
        assert torch.allclose(hess[n].hessian(), 2.0 / 3 * rows.T @ rows, rtol=1e-11, atol=1e-12)


def _prune(model, method, pattern, calib, skip=True, monkeypatch=None):
    if not skip:
        monkeypatch.setattr(calibration, "_zero_forward", lambda view: None)
    cfg = (sparsekit.SparsifyConfig(method=method, pattern="nm", n=2, m=4) if pattern == "nm" else
           sparsekit.SparsifyConfig(method=method, pattern="unstructured", sparsity=0.5))
    res = sparsekit.sparsify(model, cfg, calibration=calib, progress=False)
    if not skip:
        monkeypatch.undo()
    return res


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["nm", "unstructured"])
@pytest.mark.parametrize("packed", [True, False])
def test_skipping_the_last_layer_changes_nothing(method, pattern, packed, monkeypatch):
    model = _tiny_gpt2()
    calib = _calibration(packed)
    fast = _prune(model, method, pattern, calib)
    plain = _prune(model, method, pattern, calib, skip=False, monkeypatch=monkeypatch)
    assert fast.masks.keys() == plain.masks.keys()
    for name in fast.masks:
        assert torch.equal(fast.masks[name], plain.masks[name]), name
    for (k, a), (_, b) in zip(fast.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_each_block_runs_at_most_twice_and_its_last_layer_once(monkeypatch):
    """Block order: block b runs once for its inputs and once pruned; the last block is not run
    pruned (nothing after it is pruned); the MLP's output layer computes only in the pruned run,
    except in the first block, whose extra forward shows the skip is safe."""
    from transformers.pytorch_utils import Conv1D

    layers = 4
    work = _tiny_gpt2(layers)
    calls = {"block": [0] * layers, "mlp.c_proj": [0] * layers, "pre": {}}
    index = {work.transformer.h[b].mlp.c_proj: b for b in range(layers)}
    real_forward = Conv1D.forward

    def counting(self, x):  # the class's forward: a skipped layer's stand-in does not come here
        if self in index:
            calls["mlp.c_proj"][index[self]] += 1
        return real_forward(self, x)

    monkeypatch.setattr(Conv1D, "forward", counting)
    for b, block in enumerate(work.transformer.h):  # completed runs of each block
        block.register_forward_hook(lambda m, a, o, b=b: calls["block"].__setitem__(b, calls["block"][b] + 1))
    names = [n for n, _ in prunable_layers(work) if n.startswith("transformer.h.")]
    for n, mod in work.named_modules():
        if n in names:
            mod.register_forward_pre_hook(lambda m, a, n=n: calls["pre"].__setitem__(n, calls["pre"].get(n, 0) + 1))
    cfg = sparsekit.SparsifyConfig(method="wanda", pattern="nm", n=2, m=4)
    out = get_method("wanda").run(work, names, cfg, _calibration(), None)
    assert out.order == "block" and set(out.masks) == set(names)
    assert calls["block"] == [2] * (layers - 1) + [1]  # the last block's pruned run never starts
    assert calls["mlp.c_proj"] == [2] + [1] * (layers - 2) + [0]
    # Every layer is called once per block run (the skipped one too: its inputs are captured).
    assert all(calls["pre"][n] == (1 if n.startswith(f"transformer.h.{layers - 1}.") else 2) for n in names)


class _Block(nn.Module):
    """fc1 then fc2; a block with ``late`` also calls ``extra`` after fc2 (so fc2 is not last)."""

    def __init__(self, late: bool) -> None:
        super().__init__()
        self.fc1, self.fc2, self.extra = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.late = late

    def forward(self, x):
        h = x + self.fc2(torch.relu(self.fc1(x)))
        if self.late:
            h = h + self.extra(h)
        return h


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(False), _Block(True), _Block(False)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_layer_running_after_the_skipped_one_redoes_the_extra_forward(method, monkeypatch):
    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.randn(64, 8)
    fast = _prune(net, method, "nm", x)
    plain = _prune(net, method, "nm", x, skip=False, monkeypatch=monkeypatch)
    # The second block's extra layer runs after fc2, which the first block showed to be last:
    # its inputs depend on fc2's real output, so that block's extra forward is redone in full.
    assert "blocks.1.extra" not in fast.notes and "not reached" in fast.notes["blocks.0.extra"]
    for name in plain.masks:
        assert torch.equal(fast.masks[name], plain.masks[name]), name
    for (k, a), (_, b) in zip(fast.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_the_estimate_says_what_the_calibration_forward_runs():
    from sparsekit.methods.cost import calibration_text

    assert calibration_text(_calibration(packed=True)) == "43 calibration tokens (3 rows)"  # 48 positions, 5 padding
    assert calibration_text({"input_ids": torch.zeros(1, 7, dtype=torch.long)}) == "7 calibration tokens (1 row)"
    assert calibration_text(torch.zeros(1200, 8)) == "1,200 calibration samples"
    assert calibration_text(None) == ""
